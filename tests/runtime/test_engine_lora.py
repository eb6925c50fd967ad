"""LoRA adapters in the engine: a GGUF adapter applied at runtime gives the same greedy text as the adapter
merged into the weights by the converter; scales change between steps without reloading."""

from __future__ import annotations

import pytest
from lora_adapters import make_adapter

from lcpp_zh.convert.lora_adapter import convert_lora
from lcpp_zh.convert.pipeline import convert_checkpoint
from lcpp_zh.errors import EngineError, ModelError
from lcpp_zh.runtime.engine import Engine
from lcpp_zh.runtime.sampling import SamplingParams
from lcpp_zh.runtime.settings import EngineSettings

GREEDY = SamplingParams(temperature=0, repeat_penalty=1.0, max_tokens=24)


@pytest.fixture(scope="module")
def adapters(tiny_zh_hf, tmp_path_factory):
    root = tmp_path_factory.mktemp("engine-lora")
    peft = make_adapter(tiny_zh_hf, root / "peft", r=4, alpha=8, seed=5)
    return {
        "gguf": convert_lora(peft, tiny_zh_hf, root / "zh.gguf"),
        "merged": convert_checkpoint(tiny_zh_hf, root / "merged.gguf", outtype="f32", loras=[(peft, 1.0)]),
    }


def _greedy(engine: Engine) -> tuple[int, ...]:
    prompt = engine.tokenize("<s>Human: 介绍一下北京\n</s><s>Assistant: ", add_bos=False)
    return engine.generate(prompt, GREEDY)[1].tokens


def test_runtime_adapter_equals_merged_weights(tiny_zh_gguf, adapters):
    with Engine(adapters["merged"], EngineSettings(n_ctx=256, n_parallel=1, n_threads=2)) as merged:
        expected = _greedy(merged)
    with Engine(tiny_zh_gguf, EngineSettings(n_ctx=256, n_parallel=1, n_threads=2)) as base:
        plain = _greedy(base)
    settings = EngineSettings(n_ctx=256, n_parallel=2, n_threads=2, loras=((str(adapters["gguf"]), 1.0),))
    with Engine(tiny_zh_gguf, settings) as eng:
        assert eng.lora_adapters()[0]["scale"] == 1.0
        assert _greedy(eng) == expected != plain
        eng.set_lora_scales([{"id": 0, "scale": 0.0}])  # off: the base model again, same engine
        assert _greedy(eng) == plain
        finished = eng.generate(eng.tokenize("<s>Human: 介绍一下北京\n</s><s>Assistant: ", add_bos=False), GREEDY)[1]
        assert finished.cached_tokens > 0  # caches filled after the change are reused again


def test_lora_errors(tiny_zh_gguf, tmp_path):
    with Engine(tiny_zh_gguf, EngineSettings(n_ctx=256, n_parallel=1, n_threads=2)) as eng:
        with pytest.raises(EngineError, match="no LoRA adapters"):
            eng.set_lora_scales([{"id": 0, "scale": 1.0}])
    with pytest.raises(ModelError):
        Engine(tiny_zh_gguf, EngineSettings(n_ctx=256, n_parallel=1, loras=((str(tmp_path / "missing.gguf"), 1.0),)))
