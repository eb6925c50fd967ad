"""LoRA adapters made by the real `peft` library on the tiny Chinese Llama: merged at conversion, and converted
to GGUF LoRA adapters for llama.cpp's runtime.

References: transformers with peft's merge_and_unload() for merged logits, llama.cpp's own
convert_lora_to_gguf.py for the adapter files, the merged model for the runtime adapter.
"""

from __future__ import annotations

import numpy as np
import pytest
from lora_adapters import NEW_TOKENS, make_adapter, merged_reference, model_logits, run_reference_lora

from fixtures.logits import llama_cpp_logits, nmse
from lcpp_zh.convert.lora import AdapterError
from lcpp_zh.convert.lora_adapter import convert_lora
from lcpp_zh.convert.pipeline import convert_checkpoint

# Ids inside the tokenizer's 1202 pieces: Chinese characters, ASCII, bytes and the added tokens' neighbours.
TOKEN_IDS = [1, 29, 310, 1190, 57, 640, 900, 12, 401, 1001, 1150, 33, 777, 505, 260, 1199]


@pytest.fixture(scope="module")
def adapters(tiny_zh_hf, tmp_path_factory):
    """PEFT adapters: plain (safetensors), rsLoRA with rank/alpha patterns (.bin), vocabulary-resizing,
    embedding LoRA, bf16 (.bin, like FlagAlpha's)."""
    root = tmp_path_factory.mktemp("lora-adapters")
    plain = make_adapter(tiny_zh_hf, root / "plain", r=4, alpha=8, seed=1)
    rslora = make_adapter(tiny_zh_hf, root / "rslora", r=8, alpha=16, rslora=True, seed=2, weights="bin",
                          targets=("q_proj", "k_proj", "v_proj", "o_proj", "down_proj"),
                          rank_pattern={"q_proj": 2}, alpha_pattern={"o_proj": 3})
    resize = make_adapter(tiny_zh_hf, root / "resize", r=4, alpha=8, seed=3, resize=True,
                          targets=("q_proj", "v_proj", "up_proj"))
    embed = make_adapter(tiny_zh_hf, root / "embed", r=4, alpha=4, seed=4, targets=("embed_tokens", "k_proj"))
    bf16 = make_adapter(tiny_zh_hf, root / "bf16", r=8, alpha=32, seed=6, weights="bin", dtype="bfloat16")
    return {"plain": plain, "rslora": rslora, "resize": resize, "embed": embed, "bf16": bf16}


def _llama(path, **kwargs):
    import llama_cpp

    # An F32 KV cache: the default F16 one alone costs ~1e-6 NMSE, which would blur the comparisons.
    return llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=256, n_threads=2, n_gpu_layers=0,
                           type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, verbose=False, **kwargs)


# The bars are 1e-5 (merged vs peft) and 1e-4 (runtime vs merged); with f32 weights and an f32 KV cache
# both measure about 1e-12, so the tests hold them to 1e-8: a rounding-sized slip (an f16 scale) would show.
TIGHT = 1e-8


def _compare(got: np.ndarray, ref: np.ndarray, limit: float = TIGHT) -> float:
    error = nmse(got, ref)
    assert error < limit, f"NMSE {error:.3e}"
    assert (got.argmax(-1) == ref.argmax(-1)).all(), "top-1 differs"
    return error


@pytest.mark.parametrize("case", [("plain", 1.0), ("rslora", 1.0), ("plain", 0.5), ("embed", 1.0), ("bf16", 1.0)],
                         ids=["plain", "rslora-bin", "scale-0.5", "embedding-lora", "bf16-bin"])
def test_merged_logits_match_peft_merge_and_unload(tiny_zh_hf, adapters, tmp_path, case):
    name, scale = case
    out = convert_checkpoint(tiny_zh_hf, tmp_path / "merged.gguf", outtype="f32", loras=[(adapters[name], scale)])
    reference = model_logits(merged_reference(tiny_zh_hf, [(adapters[name], scale)]), TOKEN_IDS)
    base = model_logits(merged_reference(tiny_zh_hf, []), TOKEN_IDS)
    assert nmse(base, reference) > 1e-2  # the adapter really changes the model
    got = llama_cpp_logits(_llama(out), TOKEN_IDS)
    _compare(got, reference)


def test_two_adapters_merge_in_order(tiny_zh_hf, adapters, tmp_path):
    loras = [(adapters["plain"], 0.5), (adapters["rslora"], 1.5)]
    out = convert_checkpoint(tiny_zh_hf, tmp_path / "merged2.gguf", outtype="f32", loras=loras)
    reference = model_logits(merged_reference(tiny_zh_hf, loras), TOKEN_IDS)
    _compare(llama_cpp_logits(_llama(out), TOKEN_IDS), reference)


def test_scale_zero_merge_is_the_base_file(tiny_zh_hf, tiny_zh_gguf, adapters, tmp_path):
    out = convert_checkpoint(tiny_zh_hf, tmp_path / "zero.gguf", outtype="f32", loras=[(adapters["plain"], 0.0)])
    assert out.read_bytes() == tiny_zh_gguf.read_bytes()


def test_vocab_resizing_adapter_merges_with_its_tokenizer(tiny_zh_hf, adapters, tmp_path):
    from transformers import AutoTokenizer

    adapter = adapters["resize"]
    out = convert_checkpoint(tiny_zh_hf, tmp_path / "resized.gguf", outtype="f32", loras=[(adapter, 1.0)])
    tokenizer = AutoTokenizer.from_pretrained(str(adapter), use_fast=False)
    llm = _llama(out)
    assert llm.n_vocab() == len(tokenizer) > 1216
    text = f"你好{NEW_TOKENS[3]}世界{NEW_TOKENS[23]}"
    expected = tokenizer(text)["input_ids"]
    assert {tokenizer.convert_tokens_to_ids(NEW_TOKENS[3]), tokenizer.convert_tokens_to_ids(NEW_TOKENS[23])} <= set(expected)
    assert llm.tokenize(text.encode("utf-8"), add_bos=True, special=True) == expected
    reference = model_logits(merged_reference(tiny_zh_hf, [(adapter, 1.0)]), expected)
    _compare(llama_cpp_logits(llm, expected), reference)


# The reference's own `auto` crashes on LoRA tensors; ours picks bf16 for a bf16 adapter, as its rule says.
@pytest.mark.parametrize("name, outtype, reference_outtype",
                         [("plain", "f32", "f32"), ("plain", "q8_0", "q8_0"), ("embed", "f16", "f16"),
                          ("bf16", "auto", "bf16")])
def test_adapter_gguf_matches_llama_cpp_converter(tiny_zh_hf, adapters, tmp_path, name, outtype, reference_outtype):
    import gguf

    ours = gguf.GGUFReader(convert_lora(adapters[name], tiny_zh_hf, tmp_path / "ours.gguf", outtype))
    theirs = gguf.GGUFReader(run_reference_lora(adapters[name], tiny_zh_hf, tmp_path / "ref.gguf",
                                                reference_outtype))
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    assert "blk.0.attn_k.weight.lora_b" in [t.name for t in ours.tensors]
    for a, b in zip(ours.tensors, theirs.tensors, strict=True):
        assert (list(a.shape), a.tensor_type) == (list(b.shape), b.tensor_type), a.name
        assert np.array_equal(a.data, b.data), a.name

    def fields(reader):
        return {f.name: (f.types, f.contents()) for f in reader.fields.values()}

    assert fields(ours) == fields(theirs)
    assert fields(ours)["general.type"][1] == "adapter" and fields(ours)["adapter.type"][1] == "lora"


@pytest.mark.parametrize("name", ["plain", "rslora", "embed"])
def test_runtime_adapter_matches_merged_model(tiny_zh_hf, tiny_zh_gguf, adapters, tmp_path, name):
    adapter = convert_lora(adapters[name], tiny_zh_hf, tmp_path / "adapter.gguf")
    merged = convert_checkpoint(tiny_zh_hf, tmp_path / "merged.gguf", outtype="f32", loras=[(adapters[name], 0.8)])
    got = llama_cpp_logits(_llama(tiny_zh_gguf, lora_path=str(adapter), lora_scale=0.8), TOKEN_IDS)
    _compare(got, llama_cpp_logits(_llama(merged), TOKEN_IDS))


def test_runtime_scale_zero_gives_base_logits(tiny_zh_hf, tiny_zh_gguf, adapters, tmp_path):
    adapter = convert_lora(adapters["plain"], tiny_zh_hf, tmp_path / "adapter.gguf")
    got = llama_cpp_logits(_llama(tiny_zh_gguf, lora_path=str(adapter), lora_scale=0.0), TOKEN_IDS)
    base = llama_cpp_logits(_llama(tiny_zh_gguf), TOKEN_IDS)
    assert np.array_equal(got, base)
    with_adapter = llama_cpp_logits(_llama(tiny_zh_gguf, lora_path=str(adapter)), TOKEN_IDS)
    assert nmse(with_adapter, base) > 1e-2


def test_adapter_with_full_weights_is_refused_as_runtime_adapter(tiny_zh_hf, adapters, tmp_path):
    with pytest.raises(AdapterError, match=r"full weights .*lcpp-zh convert BASE --lora"):
        convert_lora(adapters["resize"], tiny_zh_hf, tmp_path / "adapter.gguf")
    assert list(tmp_path.iterdir()) == []


def test_gqa_base_runtime_adapter_matches_peft(tiny_llama, tmp_path):
    """K has fewer heads than Q: lora_b of k_proj is permuted with the kv head count."""
    base = tiny_llama(num_key_value_heads=2)
    adapter = make_adapter(base, tmp_path / "gqa", r=4, alpha=8, seed=5)
    base_gguf = convert_checkpoint(base, tmp_path / "base.gguf", outtype="f32")
    merged = convert_checkpoint(base, tmp_path / "merged.gguf", outtype="f32", loras=[(adapter, 1.0)])
    runtime = convert_lora(adapter, base, tmp_path / "adapter.gguf")
    reference = model_logits(merged_reference(base, [(adapter, 1.0)]), TOKEN_IDS)
    _compare(llama_cpp_logits(_llama(merged), TOKEN_IDS), reference)
    _compare(llama_cpp_logits(_llama(base_gguf, lora_path=str(runtime)), TOKEN_IDS), reference)


def test_vocab_resizing_adapter_without_its_tokenizer_is_refused(tiny_zh_hf, adapters, tmp_path):
    import shutil

    adapter = shutil.copytree(adapters["resize"], tmp_path / "no-tokenizer")
    for name in ("tokenizer.model", "tokenizer_config.json", "added_tokens.json", "special_tokens_map.json"):
        (adapter / name).unlink(missing_ok=True)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(AdapterError, match=r"resizes the vocabulary to 1226 tokens but ships no tokenizer"):
        convert_checkpoint(tiny_zh_hf, out_dir / "m.gguf", outtype="f32", loras=[(adapter, 1.0)])
    assert list(out_dir.iterdir()) == []
