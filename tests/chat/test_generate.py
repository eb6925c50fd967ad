"""`lcpp-zh generate` end to end (the installed command on SmolLM2), and the one-line errors for bad input:
missing file, corrupt GGUF, unknown template, impossible context size."""

from __future__ import annotations

import json

import pytest

from lcpp_zh.chat.generate import generate
from lcpp_zh.runtime.engine import Engine
from lcpp_zh.runtime.sampling import SamplingParams
from lcpp_zh.runtime.settings import EngineSettings


def test_generate_json(run_cli, smollm2_gguf):
    result = run_cli("generate", smollm2_gguf, "What is the capital of France?", "--temperature", "0",
                     "--max-new-tokens", "16", "--threads", "2", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert "Paris" in data["text"]
    assert data["completion_tokens"] <= 16 and data["prompt_tokens"] > 10
    assert data["finish_reason"] in ("stop", "length") and data["template"] == "gguf"
    assert data["tokens_per_s"] > 0 and data["ttft_s"] > 0


def test_generate_streams_text_and_stats(run_cli, smollm2_gguf):
    result = run_cli("generate", smollm2_gguf, "Once upon a time", "--raw", "--temperature", "0",
                     "--max-new-tokens", "12", "--threads", "2", "--gpu-layers", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "tokens/s" in result.stderr and "running on the CPU" in result.stderr


def test_raw_greedy_equals_llama_cpp_python(smollm2_gguf):
    from llama_cpp import Llama

    with Engine(smollm2_gguf, EngineSettings(n_ctx=512, n_parallel=1, n_threads=2)) as engine:
        ours = generate(engine, "The three primary colors are", SamplingParams(temperature=0, repeat_penalty=1.0,
                                                                              max_tokens=24), raw=True)
    llm = Llama(str(smollm2_gguf), n_ctx=512, n_threads=2, verbose=False,
                flash_attn=True)  # llama.cpp's default (auto) turns it on for CPUs, as in our engine
    try:
        ref = llm.create_completion("The three primary colors are", max_tokens=24, temperature=0, repeat_penalty=1.0)
    finally:
        llm.close()
    assert ours.text == ref["choices"][0]["text"]


def test_stop_flag(run_cli, smollm2_gguf):
    args = ["generate", smollm2_gguf, "Numbers: 1, 2, 3, 4,", "--raw", "--temperature", "0", "--repeat-penalty", "1",
            "--max-new-tokens", "20", "--threads", "2", "--json"]
    full = json.loads(run_cli(*args).stdout)
    assert full["text"].startswith(" 5, 6, 7, 8")  # the premise: greedy counting goes on
    data = json.loads(run_cli(*args, "--stop", " 7").stdout)
    assert data["finish_reason"] == "stop" and data["text"] == " 5, 6,"


def _one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    # The offload plan may come first; the error is one line, with no traceback.
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == errors[0]
    for fragment in fragments:
        assert fragment in errors[0]


def test_missing_file(run_cli, tmp_path):
    _one_line_error(run_cli("generate", tmp_path / "nope.gguf", "hi"), "no such model file")


def test_corrupt_gguf(run_cli, tmp_path, smollm2_gguf):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"PK\x03\x04 this is a zip, not a model")
    _one_line_error(run_cli("generate", bad, "hi"), "not a GGUF file")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(smollm2_gguf.read_bytes()[: 5 << 20])  # header fine, tensor data cut off
    _one_line_error(run_cli("chat", truncated, "--gpu-layers", "0"), "corrupt or truncated GGUF")


def test_unknown_template(run_cli, smollm2_gguf):
    _one_line_error(run_cli("generate", smollm2_gguf, "hi", "--template", "nope"), "unknown template 'nope'")


@pytest.mark.parametrize("ctx, fragment", [("8", "too small"), ("4000000000", "could not create a context")])
def test_impossible_context(run_cli, smollm2_gguf, ctx, fragment):
    _one_line_error(run_cli("generate", smollm2_gguf, "hi", "--ctx", ctx, "--gpu-layers", "0"), fragment)


def test_bad_gpu_layers(run_cli, smollm2_gguf):
    _one_line_error(run_cli("generate", smollm2_gguf, "hi", "--gpu-layers", "lots"), "--gpu-layers")


def test_prompt_longer_than_context(run_cli, smollm2_gguf):
    _one_line_error(run_cli("generate", smollm2_gguf, "word " * 600, "--ctx", "256", "--raw", "--gpu-layers", "0"),
                    "context")
