"""F32 conversions run by llama.cpp give the logits transformers gives for the same checkpoint.

The same token ids go to transformers (float32, CPU) and to llama.cpp (llama-cpp-python) on our F32 GGUF:
NMSE below 1e-6 and the same top-1 token at every position, on Chinese, English and chat-format prompts,
for the tiny Chinese Llama variants and for SmolLM2-135M-Instruct.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.logits import hf_logits, llama_cpp_logits, llama_cpp_model, nmse, top1_mismatches
from lcpp_zh.convert.pipeline import convert_checkpoint

NMSE_LIMIT = 1e-6
PROMPTS = [
    "如何向一个六岁的孩子解释什么是机器学习？",
    "Machine learning lets a computer learn from examples.",
    "<s>Human: 你好，请介绍一下Llama 2模型。\n</s><s>Assistant: ",
    "今天是2024年1月1日，temperature是25度 🦙",
]

TINY_VARIANTS = {
    "default": {},
    "bin-sharded-f16-mixed": {"weights": "bin-sharded", "dtype": "float16"},
    "gqa-tied-theta500k": {"num_key_value_heads": 2, "tie_word_embeddings": True, "rope_theta": 500000.0},
    "rope-linear": {"rope_scaling": (("rope_type", "linear"), ("factor", 2.0))},
    "rope-yarn": {"rope_scaling": (("rope_type", "yarn"), ("factor", 4.0),
                                   ("original_max_position_embeddings", 128))},
}


def _tokenize(hf_dir: Path, text: str) -> list[int]:
    from transformers import AutoTokenizer

    # The slow SentencePiece tokenizer when there is a tokenizer.model (Atom ships no tokenizer.json).
    use_fast = not (hf_dir / "tokenizer.model").is_file()
    return AutoTokenizer.from_pretrained(str(hf_dir), use_fast=use_fast).encode(text)


def _assert_logits_match(hf_dir: Path, gguf_path: Path, prompts: list[str]) -> None:
    model = llama_cpp_model(gguf_path)
    try:
        for text in prompts:
            ids = _tokenize(hf_dir, text)
            assert len(ids) >= 3, ids
            got, ref = llama_cpp_logits(model, ids), hf_logits(hf_dir, ids)
            assert got.shape == ref.shape
            # Flat logits would make both checks vacuous: the fixtures are built to avoid that.
            assert ref.std() > 0.5
            err = nmse(got, ref)
            assert err < NMSE_LIMIT, f"{text!r}: NMSE {err:.3g} >= {NMSE_LIMIT}"
            bad = top1_mismatches(got, ref)
            assert not bad, f"{text!r}: top-1 differs at positions {bad} (ids {ids})"
    finally:
        model.close()


@pytest.mark.parametrize("variant", list(TINY_VARIANTS))
def test_tiny_f32_logits_match_transformers(variant, tiny_llama, tmp_path):
    hf_dir = tiny_llama(**TINY_VARIANTS[variant])
    out = Path(convert_checkpoint(hf_dir, tmp_path / "tiny.f32.gguf", outtype="f32"))
    _assert_logits_match(hf_dir, out, PROMPTS)


def test_tiny_zh_gguf_fixture_matches_transformers(tiny_zh_hf, tiny_zh_gguf):
    """The shared `tiny_zh_gguf` fixture other test files use is a faithful conversion."""
    _assert_logits_match(tiny_zh_hf, tiny_zh_gguf, PROMPTS[:1])


@pytest.mark.slow
def test_smollm2_f32_logits_match_transformers(smollm2_hf, tmp_path):
    out = Path(convert_checkpoint(smollm2_hf, tmp_path / "smollm2.f32.gguf", outtype="f32"))
    chat = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    _assert_logits_match(smollm2_hf, out, [PROMPTS[1], chat, PROMPTS[0]])


def test_logit_check_detects_wrong_weights(tiny_llama, tiny_zh_gguf):
    """Negative control: the same comparison against a checkpoint with other weights must fail."""
    with pytest.raises(AssertionError, match="NMSE|top-1"):
        _assert_logits_match(tiny_llama(seed=99), tiny_zh_gguf, PROMPTS[:1])
