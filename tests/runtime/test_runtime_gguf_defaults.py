"""The runtime's sampling defaults come from the GGUF (general.sampling.*), as llama.cpp's tools take them;
the seed's values where a GGUF has none; a setting the user gave explicitly still wins.

Metadata is read back through llama.cpp itself (llama_model_meta_*), the way the engine sees it.
"""

from __future__ import annotations

import json

import pytest

from lcpp_zh.convert.pipeline import convert_checkpoint
from lcpp_zh.runtime.gguf_defaults import apply_model_defaults, gguf_sampling, sampling_defaults
from lcpp_zh.runtime.llama_api import LlamaModel
from lcpp_zh.runtime.sampling import SamplingParams


def _metadata(path) -> dict[str, str]:
    model = LlamaModel(path, vocab_only=True)
    try:
        return model.metadata()
    finally:
        model.close()


def test_gguf_values_become_the_defaults(tiny_llama, copy_checkpoint, tmp_path):
    hf_dir = copy_checkpoint(tiny_llama())
    path = hf_dir / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "temperature": 0.6, "top_p": 0.9, "top_k": 40,
                                "repetition_penalty": 1.1, "min_p": 0.05}), encoding="utf-8")
    gguf_path = convert_checkpoint(hf_dir, tmp_path / "own.gguf", outtype="f16")
    metadata = _metadata(gguf_path)
    assert metadata["general.sampling.top_p"] == "0.900000"  # llama.cpp's text form of the float32
    params = sampling_defaults(metadata)
    seed = SamplingParams()
    assert (params.temperature, params.top_p, params.top_k, params.repeat_penalty, params.min_p) == (
        0.6, 0.9, 40, 1.1, 0.05)
    # What the GGUF does not set keeps the seed's value.
    assert (params.repeat_last_n, params.max_tokens) == (seed.repeat_last_n, seed.max_tokens)


def test_flagalpha_values_from_a_converted_atom(tiny_zh_gguf):
    assert gguf_sampling(_metadata(tiny_zh_gguf)) == {"temperature": 0.3, "top_p": 0.95, "top_k": 50,
                                                      "repeat_penalty": 1.3}


def test_no_settings_means_the_seeds_defaults(smollm2_gguf):
    metadata = _metadata(smollm2_gguf)
    assert not any(k.startswith("general.sampling.") for k in metadata)
    assert sampling_defaults(metadata) == SamplingParams()


def test_explicit_user_settings_win():
    metadata = {"general.sampling.temp": "0.600000", "general.sampling.top_k": "40",
                "general.sampling.penalty_last_n": "256"}
    user = SamplingParams(temperature=1.0, top_k=50, max_tokens=100)
    params = apply_model_defaults(user, metadata, explicit={"temperature", "max_tokens"})
    assert params.temperature == 1.0 and params.max_tokens == 100  # given on the command line
    assert params.top_k == 40 and params.repeat_last_n == 256  # left at their defaults: the model's


@pytest.mark.parametrize(("key", "raw"), [("general.sampling.top_p", "0.000000"),
                                          ("general.sampling.temp", "-1.000000"),
                                          ("general.sampling.top_k", "many")])
def test_unusable_values_are_ignored(key, raw, caplog):
    """A bad suggestion in a model file is skipped with a warning, never an error that blocks the model."""
    assert gguf_sampling({key: raw, "general.sampling.min_p": "0.100000"}) == {"min_p": 0.1}
    assert key in caplog.text
