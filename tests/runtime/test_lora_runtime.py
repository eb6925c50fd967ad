"""lcpp_zh.runtime.lora on a real llama.cpp context (llama-cpp-python's own Llama owns model and context):
attach adapters, switch scales without reloading, and compare with merged models converted by lcpp-zh.
"""

from __future__ import annotations

import numpy as np
import pytest
from lora_adapters import make_adapter

from fixtures.logits import llama_cpp_logits, nmse
from lcpp_zh.convert.lora_adapter import convert_lora
from lcpp_zh.convert.pipeline import convert_checkpoint
from lcpp_zh.errors import ModelError
from lcpp_zh.runtime.lora import LoraSet

TOKEN_IDS = [1, 29, 310, 1190, 57, 640, 900, 12, 401, 1001, 1150, 33]


def _llama(path):
    import llama_cpp

    # An F32 KV cache: the default F16 one alone costs ~1e-6 NMSE, which would blur the comparisons.
    return llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=128, n_threads=2, n_gpu_layers=0,
                           type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, verbose=False)


@pytest.fixture(scope="module")
def runtime(tiny_zh_hf, tmp_path_factory):
    """Two PEFT adapters as GGUF adapters, and merged references at the scales the tests use."""
    root = tmp_path_factory.mktemp("lora-runtime")
    peft_a = make_adapter(tiny_zh_hf, root / "peft-a", r=4, alpha=8, seed=21)
    peft_b = make_adapter(tiny_zh_hf, root / "peft-b", r=2, alpha=2, seed=22, targets=("v_proj", "up_proj"))
    out = {
        "a": convert_lora(peft_a, tiny_zh_hf, root / "zh-a.gguf"),
        "b": convert_lora(peft_b, tiny_zh_hf, root / "zh-b.gguf"),
        "peft_a": peft_a,
    }
    for key, loras in {"a@0.8": [(peft_a, 0.8)], "a@1": [(peft_a, 1.0)],
                       "a@0.5+b@1.5": [(peft_a, 0.5), (peft_b, 1.5)]}.items():
        merged = convert_checkpoint(tiny_zh_hf, root / f"merged-{key}.gguf", outtype="f32", loras=loras)
        out[key] = llama_cpp_logits(_llama(merged), TOKEN_IDS)
    return out


def test_attach_switch_and_disable_without_reloading(tiny_zh_gguf, runtime):
    llm = _llama(tiny_zh_gguf)
    base = llama_cpp_logits(llm, TOKEN_IDS)
    loras = LoraSet(llm._model.model, [(runtime["a"], 0.8), (runtime["b"], 0.0)])
    try:
        assert [(a["id"], a["name"], a["scale"], a["alpha"]) for a in loras.describe()] == [
            (0, "zh-a", 0.8, 8.0), (1, "zh-b", 0.0, 2.0)]
        loras.apply(llm._ctx.ctx)
        got = llama_cpp_logits(llm, TOKEN_IDS)
        assert nmse(got, runtime["a@0.8"]) < 1e-8 and (got.argmax(-1) == runtime["a@0.8"].argmax(-1)).all()
        loras.set_scale("zh-a", 1.0)
        loras.apply(llm._ctx.ctx)
        got = llama_cpp_logits(llm, TOKEN_IDS)
        assert nmse(got, runtime["a@1"]) < 1e-8 and (got.argmax(-1) == runtime["a@1"].argmax(-1)).all()
        loras.set_scales([{"id": 0, "scale": 0.5}, {"name": "zh-b", "scale": 1.5}])
        loras.apply(llm._ctx.ctx)
        got = llama_cpp_logits(llm, TOKEN_IDS)
        ref = runtime["a@0.5+b@1.5"]
        assert nmse(got, ref) < 1e-8 and (got.argmax(-1) == ref.argmax(-1)).all()
        loras.set_scales([])  # llama-server semantics: unlisted adapters are disabled
        loras.apply(llm._ctx.ctx)
        assert np.array_equal(llama_cpp_logits(llm, TOKEN_IDS), base)
    finally:
        loras.free()


def test_bad_adapters_and_requests_are_clear_errors(tiny_zh_gguf, tiny_llama, runtime, tmp_path):
    llm = _llama(tiny_zh_gguf)
    loras = LoraSet(llm._model.model)
    with pytest.raises(ModelError, match="not a LoRA adapter"):
        loras.load(tiny_zh_gguf)
    with pytest.raises(ModelError, match="lcpp-zh convert-lora"):
        loras.load(runtime["peft_a"])
    gqa = tiny_llama(num_key_value_heads=2)
    other = convert_lora(make_adapter(gqa, tmp_path / "gqa", seed=23), gqa, tmp_path / "gqa.gguf")
    with pytest.raises(ModelError, match="different base model"):
        loras.load(other)
    loras.load(runtime["a"])
    with pytest.raises(ModelError, match="no LoRA adapter 'nope'"):
        loras.set_scale("nope", 1.0)
    with pytest.raises(ModelError, match="finite number"):
        loras.set_scales([{"id": 0, "scale": float("nan")}])
    assert loras.describe()[0]["scale"] == 1.0  # a refused request changes nothing
    loras.free()
