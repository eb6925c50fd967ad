"""Importance matrices against llama.cpp's own llama-imatrix and llama-quantize.

SmolLM2-135M-Instruct (F16, converted by lcpp-zh) over the built-in Chinese text at ctx 128, 256 and 512, with
llama-imatrix's default -b and another: the two programs write byte-identical files; each program's quantizer
reads the other's file and both quantizers write byte-identical files from the same matrix. Every quantization type is
made on a "wide" tiny Llama (256 / 512 columns, so that the IQ and K types apply to every weight instead of
falling back); hostile inputs give one line and no file.
"""

from __future__ import annotations

import ctypes
import json
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fixtures.llama_tools import llama_tool
from fixtures.tiny_llama import TinySpec, build_tiny_llama
from lcpp_zh.convert.imatrix_file import read_imatrix
from lcpp_zh.convert.quantize import QuantType, needs_imatrix, quantize_gguf
from lcpp_zh.errors import LcppError
from lcpp_zh.eval.quantization.imatrix import MIN_ROWS, compute_imatrix
from lcpp_zh.eval.texts import builtin_text, read_text

CTX, CHUNKS, THREADS = 128, 6, 2
IMATRIX_KEYS = {"quantize.imatrix.file", "quantize.imatrix.dataset", "quantize.imatrix.entries_count",
                "quantize.imatrix.chunks_count"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("imatrix")


@pytest.fixture(scope="module")
def zh_file(folder) -> Path:
    path = folder / "zh.txt"
    path.write_text(builtin_text("zh"), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def smollm2_f16(smollm2_hf, converted) -> Path:
    return converted(smollm2_hf, "f16")


def _llama_imatrix(model: Path, text: Path, out: Path, ctx: int = CTX, chunks: int = CHUNKS,
                   batch: int | None = None) -> Path:
    tool = llama_tool("llama-imatrix")
    proc = subprocess.run([tool, "-m", model, "-f", text.name, "-c", str(ctx), "--chunks", str(chunks), "-o", out,
                           "-t", str(THREADS), "--no-ppl", *(["-b", str(batch)] if batch else [])], cwd=text.parent,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def _llama_quantize(model: Path, out: Path, qtype: str, imatrix: str, cwd: Path) -> Path:
    tool = llama_tool("llama-quantize")
    proc = subprocess.run([tool, "--imatrix", imatrix, model, out, qtype, str(THREADS)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def theirs(smollm2_f16, zh_file, folder) -> Path:
    return _llama_imatrix(smollm2_f16, zh_file, folder / "theirs.imatrix.gguf")


@pytest.fixture(scope="module")
def ours(smollm2_f16, zh_file, folder) -> Path:
    matrix = compute_imatrix(smollm2_f16, read_text(zh_file), n_ctx=CTX, n_chunks=CHUNKS, n_threads=THREADS)
    return matrix.save(folder / "ours.imatrix.gguf", zh_file.name)


def test_values_match_llama_imatrix(ours, theirs):
    a, b = read_imatrix(ours), read_imatrix(theirs)
    assert a.names() == b.names()
    assert len(a.names()) == 30 * 7  # q, k, v, output, gate, up, down of 30 layers; output.weight skipped
    assert (a.chunk_count, a.chunk_size, a.datasets) == (b.chunk_count, b.chunk_size, b.datasets) == (CHUNKS, CTX,
                                                                                                      ["zh.txt"])
    for name in b.names():
        assert np.array_equal(a.counts[name], b.counts[name]), name
        assert a.counts[name].tolist() == [CTX * CHUNKS]
        assert a.sums[name].dtype == b.sums[name].dtype == np.float32, name
        assert np.array_equal(a.sums[name], b.sums[name]), f"{name}: {_relative(a.sums[name], b.sums[name]):.2e}"
    assert ours.read_bytes() == theirs.read_bytes()


def _relative(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.astype(np.float64), y.astype(np.float64)
    return float(np.linalg.norm(x - y) / np.linalg.norm(y))


# -b decides how many chunks share a decode, and so how llama.cpp's split_equal cuts that decode into
# micro-batches of -ub tokens (a few rows of every chunk each): the rows each attention sees at once, hence the
# float rounding of attn_output's activations. llama-imatrix itself moves by up to 1e-3 relative between -b 128
# and -b 2048 at ctx 128 (6 chunks), while threads (-t 1 or 2) change nothing; given the same -b/-ub the two
# programs agree to the bit. (6 chunks at ctx 128: with 3, all of them fit one micro-batch at either -b and the
# case would not tell the two settings apart.)
@pytest.mark.parametrize(("ctx", "batch", "chunks"), [(128, 128, CHUNKS), (256, 2048, 3), (512, 2048, 3)])
def test_values_match_llama_imatrix_at_context(ctx, batch, chunks, smollm2_f16, zh_file, folder, theirs):
    path = _llama_imatrix(smollm2_f16, zh_file, folder / f"theirs.c{ctx}.b{batch}.gguf", ctx, chunks, batch)
    matrix = compute_imatrix(smollm2_f16, read_text(zh_file), n_ctx=ctx, n_chunks=chunks, n_threads=1,
                             n_batch=batch)
    ref = read_imatrix(path)
    assert matrix.names() == ref.names() and (matrix.chunk_count, matrix.chunk_size) == (ref.chunk_count, ctx)
    for name in ref.names():
        # Not always every token: at ctx 512, 3 chunks in one decode split into micro-batches of 170 rows per
        # chunk and a last one of 2 per chunk, which both programs skip (under 16 rows): 1530 rows, "2 chunks".
        assert matrix.counts[name].tolist() == ref.counts[name].tolist(), name
        assert chunks * ctx - MIN_ROWS < matrix.counts[name][0] <= chunks * ctx, name
        assert np.array_equal(matrix.sums[name], ref.sums[name]), \
            f"ctx {ctx}, -b {batch}: {name}: relative error {_relative(matrix.sums[name], ref.sums[name]):.2e}"
    assert matrix.save(folder / f"ours.c{ctx}.b{batch}.gguf", zh_file.name).read_bytes() == path.read_bytes()
    if (ctx, chunks) == (CTX, CHUNKS):  # the same chunks at the default -b: the batch setting did matter
        default = read_imatrix(theirs)
        worst = max(_relative(matrix.sums[n], default.sums[n]) for n in ref.names())
        assert 1e-5 < worst < 1e-2, worst


def test_file_layout_matches_llama_imatrix(ours, theirs):
    from gguf import GGUFReader

    a, b = GGUFReader(str(ours)), GGUFReader(str(theirs))
    assert list(a.fields) == list(b.fields)  # the same keys, in the same order; no general.architecture
    assert a.fields["general.type"].contents() == "imatrix"
    assert [(t.name, t.tensor_type, list(t.shape)) for t in a.tensors] == \
        [(t.name, t.tensor_type, list(t.shape)) for t in b.tensors]


def test_rewriting_theirs_is_byte_identical(theirs, folder):
    """Read llama-imatrix's file and write it again: the same bytes (datasets kept, nothing added)."""
    copy = read_imatrix(theirs).save(folder / "rewritten.gguf")
    assert copy.read_bytes() == theirs.read_bytes()


@pytest.fixture(scope="module")
def plain_q6_k(smollm2_f16, folder) -> Path:
    return quantize_gguf(smollm2_f16, folder / "plain.Q6_K.gguf", "Q6_K", THREADS)


@pytest.mark.parametrize("matrix", ["ours", "theirs"])
def test_quantize_matches_llama_quantize(matrix, request, smollm2_f16, plain_q6_k, folder, monkeypatch):
    """Each quantizer reads each program's matrix, and the two write identical files: tensor data and
    metadata alike, quantize.imatrix.file included since both are given the same relative path. (Q6_K: the
    quickest type that weighs its rounding by the matrix; the IQ types are compared on the wide model.)"""
    path = request.getfixturevalue(matrix)
    ref = _llama_quantize(smollm2_f16, folder / f"ref.{matrix}.Q6_K.gguf", "Q6_K", path.name, folder)
    monkeypatch.chdir(folder)
    got = quantize_gguf(smollm2_f16, folder / f"got.{matrix}.Q6_K.gguf", "Q6_K", THREADS, imatrix=Path(path.name))
    meta = _metadata(got)
    assert meta["quantize.imatrix.file"] == path.name
    assert meta["quantize.imatrix.dataset"] == "zh.txt"
    assert meta["quantize.imatrix.entries_count"] == 210 and meta["quantize.imatrix.chunks_count"] == CHUNKS
    assert got.read_bytes() == ref.read_bytes()
    assert _tensor_bytes(got) != _tensor_bytes(plain_q6_k)  # the matrix did change the rounding


def _tensor_bytes(path: Path) -> bytes:
    from gguf import GGUFReader

    return b"".join(t.data.tobytes() for t in GGUFReader(str(path)).tensors)


def _metadata(path: Path) -> dict:
    from gguf import GGUFReader

    return {k: f.contents() for k, f in GGUFReader(str(path)).fields.items() if not k.startswith("GGUF.")}


# --- every type, on a tiny Llama wide enough for 256-column blocks --------------------------------------------

@pytest.fixture(scope="module")
def wide_f16(folder) -> Path:
    """The tiny Chinese Llama's tokenizer with hidden 256, intermediate 512 and random weights, converted to F16."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lcpp_zh.convert.pipeline import convert_checkpoint

    base = build_tiny_llama(TinySpec())
    hf = folder / "wide-hf"
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    config.update(hidden_size=256, intermediate_size=512, head_dim=64)
    config.pop("auto_map")  # Atom's remote code is not needed to build a plain Llama
    torch.manual_seed(7)
    model = LlamaForCausalLM(LlamaConfig(**config)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(1.0 + 0.1 * torch.randn_like(param) if param.ndim == 1 else 0.08 * torch.randn_like(param))
    model.save_pretrained(str(hf), safe_serialization=True)
    for item in base.iterdir():
        if item.name.startswith("tokenizer") or item.name == "special_tokens_map.json":
            shutil.copy2(item, hf / item.name)
    return convert_checkpoint(hf, folder / "wide.f16.gguf", outtype="f16")


@pytest.fixture(scope="module")
def wide_imatrix(wide_f16, zh_file, folder) -> Path:
    return _llama_imatrix(wide_f16, zh_file, folder / "wide.imatrix.gguf", ctx=64, chunks=4)


def test_needs_imatrix_agrees_with_llama_cpp(wide_f16, folder, caplog):
    """llama.cpp's dry run says which types it would refuse without a matrix; needs_imatrix says the same."""
    import llama_cpp

    from lcpp_zh.common.llama_log import route_llama_logs

    route_llama_logs()
    caplog.set_level(logging.DEBUG, logger="llama.cpp")
    refused = set()
    for quant in QuantType:
        caplog.clear()
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.dry_run, params.nthread = quant.ftype, True, THREADS
        assert llama_cpp.llama_model_quantize(str(wide_f16).encode(), str(folder / "dry.gguf").encode(),
                                              ctypes.byref(params)) == 0, quant
        if "will require an imatrix" in caplog.text:
            refused.add(quant)
    assert refused == {q for q in QuantType if needs_imatrix(q)}
    assert {q.value for q in refused} >= {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "Q2_K_S"}


@pytest.mark.parametrize("quant", list(QuantType), ids=lambda q: q.value)
def test_every_type_quantizes_with_a_matrix(quant, wide_f16, wide_imatrix, tmp_path):
    from gguf import GGUFReader

    from fixtures.logits import llama_cpp_model

    out = quantize_gguf(wide_f16, tmp_path / f"wide.{quant.value}.gguf", quant, THREADS, imatrix=wide_imatrix)
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    reader = GGUFReader(str(out))
    assert int(reader.fields["general.file_type"].contents()) == quant.ftype
    assert IMATRIX_KEYS <= set(reader.fields)
    assert reader.fields["quantize.imatrix.entries_count"].contents() == 14
    model = llama_cpp_model(out)  # llama.cpp loads it and runs it
    try:
        tokens = model.tokenize("學而時習之".encode(), add_bos=True, special=False)
        model.eval(tokens)
        assert np.isfinite(np.asarray(model.scores[: model.n_tokens])).all()
    finally:
        model.close()


@pytest.fixture(scope="module")
def wide_ours(wide_f16, zh_file, folder) -> Path:
    matrix = compute_imatrix(wide_f16, read_text(zh_file), n_ctx=64, n_chunks=4, n_threads=THREADS)
    return matrix.save(folder / "wide.ours.imatrix.gguf", zh_file.name)


@pytest.mark.parametrize("quant", ["IQ1_M", "IQ2_XXS", "Q2_K_S", "IQ3_XXS", "Q4_K_M", "IQ4_NL"])
@pytest.mark.parametrize("matrix", ["wide_imatrix", "wide_ours"])
def test_wide_quantize_matches_llama_quantize(quant, matrix, request, wide_f16, tmp_path):
    path = request.getfixturevalue(matrix)
    ref = _llama_quantize(wide_f16, tmp_path / "ref.gguf", quant, str(path), tmp_path)
    got = quantize_gguf(wide_f16, tmp_path / "got.gguf", quant, THREADS, imatrix=path)
    assert got.read_bytes() == ref.read_bytes()


def test_wide_imatrix_matches_llama_imatrix(wide_ours, wide_imatrix):
    """A model whose vocabulary adds BOS (SmolLM2's does not): each chunk's first token replaced by it."""
    a, b = read_imatrix(wide_ours), read_imatrix(wide_imatrix)
    assert a.names() == b.names() and len(a.names()) == 14
    for name in b.names():
        assert a.counts[name].tolist() == b.counts[name].tolist() == [256]
        assert np.array_equal(a.sums[name], b.sums[name]), f"{name}: {_relative(a.sums[name], b.sums[name]):.2e}"
    assert wide_ours.read_bytes() == wide_imatrix.read_bytes()


def test_legacy_dat_format(wide_f16, wide_imatrix, zh_file, folder, tmp_path):
    """llama-imatrix's legacy .dat output reads as the same means, and quantizes as llama-quantize does."""
    dat = folder / "wide.imatrix.dat"
    tool = llama_tool("llama-imatrix")
    proc = subprocess.run([tool, "-m", wide_f16, "-f", zh_file, "-c", "64", "--chunks", "4", "-o", dat,
                           "--output-format", "dat", "-t", str(THREADS), "--no-ppl"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    legacy, modern = read_imatrix(dat), read_imatrix(wide_imatrix)
    assert legacy.legacy and legacy.names() == modern.names() and legacy.chunk_count == 4
    for name, mean in modern.means().items():
        np.testing.assert_allclose(legacy.means()[name], mean, rtol=1e-5)
    ref = _llama_quantize(wide_f16, tmp_path / "ref.gguf", "IQ2_XS", str(dat), tmp_path)
    got = quantize_gguf(wide_f16, tmp_path / "got.gguf", "IQ2_XS", THREADS, imatrix=dat)
    assert got.read_bytes() == ref.read_bytes()


# --- hostile input --------------------------------------------------------------------------------------------

def test_not_an_imatrix(wide_f16, zh_file, tmp_path):
    for bad in (wide_f16, zh_file):  # a model GGUF, a text file
        with pytest.raises(LcppError, match="not an importance matrix") as info:
            quantize_gguf(wide_f16, tmp_path / "x.gguf", "IQ2_XS", THREADS, imatrix=bad)
        assert "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())


def test_another_models_imatrix(wide_f16, theirs, tmp_path):
    with pytest.raises(LcppError, match="another model") as info:
        quantize_gguf(wide_f16, tmp_path / "x.gguf", "IQ2_XS", THREADS, imatrix=theirs)
    assert "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())


def test_text_too_short(wide_f16):
    for text in ("", "子曰"):
        with pytest.raises(LcppError, match="tokens long"):
            compute_imatrix(wide_f16, text, n_ctx=64)


def test_type_needing_a_matrix_without_one(wide_f16, tmp_path):
    with pytest.raises(LcppError, match="importance matrix"):
        quantize_gguf(wide_f16, tmp_path / "x.gguf", "IQ1_S", THREADS)
    assert not list(tmp_path.iterdir())


# --- command line ---------------------------------------------------------------------------------------------

def test_cli_imatrix(run_cli, wide_f16, zh_file, wide_imatrix, tmp_path):
    out = tmp_path / "m.gguf"
    proc = run_cli("imatrix", wide_f16, "--text", zh_file, "--ctx", 64, "--chunks", 4, "--threads", THREADS,
                   "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert (info["entries"], info["chunks"], info["chunk_size"], info["dataset"]) == (14, 4, 64, str(zh_file))
    got, ref = read_imatrix(out), read_imatrix(wide_imatrix)
    assert got.names() == ref.names() and got.datasets == [str(zh_file)]


def test_cli_imatrix_batch(run_cli, wide_f16, zh_file, wide_imatrix, folder, tmp_path):
    """-b 32 under --ctx 64: two decodes per chunk, the second attending to the first's KV cells, as
    llama-imatrix -b 32 does; the sums move away from the default -b's, and agree with llama-imatrix's."""
    out = tmp_path / "m.gguf"
    proc = run_cli("imatrix", wide_f16, "--text", zh_file, "--ctx", 64, "--chunks", 4, "-b", 32, "--threads", 1,
                   "-o", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    ref = read_imatrix(_llama_imatrix(wide_f16, zh_file, folder / "wide.b32.imatrix.gguf", 64, 4, 32))
    got, default = read_imatrix(out), read_imatrix(wide_imatrix)
    assert got.names() == ref.names()
    for name in ref.names():
        assert np.array_equal(got.sums[name], ref.sums[name]), name
    assert any(not np.array_equal(got.sums[n], default.sums[n]) for n in ref.names())


@pytest.mark.parametrize(("args", "code", "message"), [
    (("-b", 100), 1, "error: the batch 100 must be a multiple of the context 64"),  # llama-imatrix asserts
    (("--batch", 0), 2, "Invalid value for '-b' / '--batch'"),
    (("--ubatch", -1), 2, "Invalid value for '--ubatch'")])
def test_cli_imatrix_bad_batch(args, code, message, run_cli, wide_f16, zh_file, tmp_path):
    out = tmp_path / "m.gguf"
    proc = run_cli("imatrix", wide_f16, "--text", zh_file, "--ctx", 64, *args, "-o", out)
    assert proc.returncode == code
    assert message in proc.stderr, proc.stderr
    if code == 1:
        assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert not list(tmp_path.iterdir())


def test_cli_imatrix_empty_text(run_cli, wide_f16, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    out = tmp_path / "m.gguf"
    proc = run_cli("imatrix", wide_f16, "--text", empty, "-o", out)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: "), proc.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt"]


def test_cli_quantize_computes_a_missing_matrix(run_cli, wide_f16, tmp_path):
    out = tmp_path / "wide.IQ2_XXS.gguf"
    proc = run_cli("quantize", wide_f16, out, "--type", "IQ2_XXS", "--threads", THREADS)
    assert proc.returncode == 0, proc.stderr
    assert "built-in Chinese text" in proc.stderr
    meta = _metadata(out)
    assert meta["quantize.imatrix.dataset"].startswith("lcpp-zh built-in zh")
    assert meta["general.file_type"] == QuantType.IQ2_XXS.ftype
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_cli_quantize_hostile_imatrix(run_cli, wide_f16, zh_file, tmp_path):
    out = tmp_path / "x.gguf"
    proc = run_cli("quantize", wide_f16, out, "--type", "IQ2_XXS", "--imatrix", zh_file)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not an importance matrix" in lines[0]
    assert not list(tmp_path.iterdir())


def test_cli_convert_with_calibration(run_cli, tiny_zh_hf, tmp_path):
    text = tmp_path / "calibration.txt"
    text.write_text(builtin_text("zh")[:3000], encoding="utf-8")  # all of it is used: keep it short
    out = tmp_path / "tiny.Q4_K_M.gguf"
    proc = run_cli("convert", tiny_zh_hf, "-o", out, "--outtype", "f16", "--quant", "Q4_K_M", "--calibration", text,
                   "--quiet")
    assert proc.returncode == 0, proc.stderr
    meta = _metadata(out)
    assert meta["quantize.imatrix.dataset"] == str(text)
    assert meta["quantize.imatrix.entries_count"] == 14 and meta["quantize.imatrix.chunks_count"] >= 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, text.name])


def test_cli_convert_with_imatrix(run_cli, tiny_zh_hf, tiny_zh_gguf, zh_file, tmp_path):
    matrix = compute_imatrix(tiny_zh_gguf, read_text(zh_file), n_ctx=64, n_chunks=2, n_threads=THREADS)
    path = matrix.save(tmp_path / "tiny.imatrix.gguf", "zh")
    out = tmp_path / "tiny.IQ2_XS.gguf"
    proc = run_cli("convert", tiny_zh_hf, "-o", out, "--outtype", "f16", "--quant", "IQ2_XS", "--imatrix", path,
                   "--quiet")
    assert proc.returncode == 0, proc.stderr
    meta = _metadata(out)
    assert meta["quantize.imatrix.file"] == str(path) and meta["quantize.imatrix.chunks_count"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, path.name])
