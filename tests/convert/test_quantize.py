"""Quantization through llama.cpp's own quantizer: files that load, keep the model's behaviour, clear errors.

SmolLM2-135M-Instruct converted to F16 by lcpp-zh is quantized to Q8_0 and Q4_K_M; both load in
llama-cpp-python, stay close to the F16 logits and answer a simple question sensibly. Types that need an
importance matrix (IQ2_XXS) fail with one clear line and leave no file when given none (the library) or a
missing one (the CLI).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures.logits import llama_cpp_logits, llama_cpp_model, nmse
from lcpp_zh.convert.pipeline import convert_checkpoint
from lcpp_zh.convert.quantize import quantize_gguf
from lcpp_zh.errors import LcppError

# Greedy answers through the model's own chat template (measured: F16, Q8_0 and Q4_K_M all get these right).
QUESTIONS = {"What is the capital of France? Answer in one word.": "paris", "How many days are in a week?": "7"}
TEXT = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is"
# Upper bounds on the NMSE of quantized logits against F16 (measured on SmolLM2: Q8_0 0.004, Q4_K_M 0.028).
NMSE_LIMITS = {"Q8_0": 0.01, "Q4_K_M": 0.1}
FILE_TYPES = {"Q8_0": 7, "Q4_K_M": 15}  # llama_ftype values written as general.file_type
QUANT_TENSOR_TYPES = {"Q8_0": {"Q8_0"}, "Q4_K_M": {"Q4_K"}}


@pytest.fixture(scope="module")
def smollm2_f16(smollm2_hf, converted) -> Path:
    return converted(smollm2_hf, "f16")


@pytest.fixture(scope="module")
def f16_reference(smollm2_f16):
    model = llama_cpp_model(smollm2_f16)
    ids = model.tokenize(TEXT.encode(), add_bos=True, special=True)
    logits = llama_cpp_logits(model, ids)
    model.close()
    return ids, logits


def _tensor_types(path: Path) -> set[str]:
    from gguf import GGUFReader

    return {t.tensor_type.name for t in GGUFReader(str(path)).tensors}


def _file_type(path: Path) -> int:
    from gguf import GGUFReader

    return int(GGUFReader(str(path)).fields["general.file_type"].contents())


def _greedy_replies(path: Path) -> dict[str, str]:
    model = llama_cpp_model(path, n_ctx=512, f32_kv_cache=False)
    try:
        replies = {}
        for question in QUESTIONS:
            out = model.create_chat_completion([{"role": "user", "content": question}], max_tokens=24,
                                               temperature=0.0, top_k=1)
            replies[question] = out["choices"][0]["message"]["content"]
    finally:
        model.close()
    return replies


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K_M"])
def test_quantized_smollm2_loads_and_behaves(qtype, smollm2_f16, f16_reference, tmp_path):
    out = quantize_gguf(smollm2_f16, tmp_path / f"smollm2.{qtype}.gguf", qtype)
    assert Path(out) == tmp_path / f"smollm2.{qtype}.gguf" and Path(out).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [Path(out).name]  # no temporary left
    assert _file_type(out) == FILE_TYPES[qtype]
    assert _tensor_types(out) & QUANT_TENSOR_TYPES[qtype], _tensor_types(out)
    assert Path(out).stat().st_size < smollm2_f16.stat().st_size * 0.75

    ids, ref = f16_reference
    model = llama_cpp_model(out)
    got = llama_cpp_logits(model, ids)
    model.close()
    err = nmse(got, ref)
    assert err < NMSE_LIMITS[qtype], f"{qtype}: NMSE vs F16 {err:.3g}"
    agree = float(np.mean(got.argmax(-1) == ref.argmax(-1)))
    assert agree >= 0.8, f"{qtype}: top-1 agrees with F16 at only {agree:.0%} of positions"
    for question, reply in _greedy_replies(out).items():
        assert QUESTIONS[question] in reply.lower(), f"{qtype}: {question!r} -> {reply!r}"


def test_imatrix_type_is_a_clear_error(smollm2_f16, tmp_path):
    with pytest.raises(LcppError, match="(?i)imatrix|importance"):
        quantize_gguf(smollm2_f16, tmp_path / "x.gguf", "IQ2_XXS")
    assert not list(tmp_path.iterdir())


def test_cli_quantize_imatrix_type(run_cli, tiny_zh_gguf, tmp_path):
    """Without --imatrix the CLI computes a matrix (tests/eval/test_imatrix.py); a missing one is a clear error."""
    proc = run_cli("quantize", tiny_zh_gguf, tmp_path / "x.gguf", "--type", "IQ2_XXS",
                   "--imatrix", tmp_path / "missing.imatrix.gguf")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and ("imatrix" in lines[-1].lower() or "importance" in lines[-1].lower())
    assert not list(tmp_path.iterdir())


def test_cli_quantize(run_cli, tiny_zh_gguf, tmp_path):
    out = tmp_path / "tiny.Q8_0.gguf"
    proc = run_cli("quantize", tiny_zh_gguf, out, "--type", "Q8_0")
    assert proc.returncode == 0, proc.stderr
    assert _file_type(out) == FILE_TYPES["Q8_0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_cli_convert_with_quant(run_cli, tiny_zh_hf, tmp_path):
    """--quant writes the quantized model under -o and keeps no unquantized file beside it."""
    out = tmp_path / "tiny.Q4_K_M.gguf"
    proc = run_cli("convert", tiny_zh_hf, "-o", out, "--outtype", "f16", "--quant", "Q4_K_M", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert _file_type(out) == FILE_TYPES["Q4_K_M"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    model = llama_cpp_model(out)
    try:
        text = model.create_completion("如何向一个六岁的孩子解释什么是机器学习？", max_tokens=8, temperature=0.0)
    finally:
        model.close()
    assert text["usage"]["completion_tokens"] > 0


def test_api_convert_with_quant(tiny_zh_hf, tmp_path):
    out = Path(convert_checkpoint(tiny_zh_hf, tmp_path / "tiny.q.gguf", outtype="f16", quant="Q8_0"))
    assert out == tmp_path / "tiny.q.gguf"
    assert _file_type(out) == FILE_TYPES["Q8_0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
