"""Base log-probabilities saved once (`lcpp-zh eval --save-base-logits`) and reused (`--base-logits`): the same
figures as a run with the base model in it, a file llama-perplexity reads (and the other way round), and a
one-line refusal for every reuse that does not match (context, chunks, vocabulary, model, text).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from fixtures.llama_tools import llama_tool
from lcpp_zh.eval.texts import builtin_text

CTX, CHUNKS, THREADS = "128", "4", "2"


@pytest.fixture(scope="module")
def f16(smollm2_hf, converted) -> Path:
    return converted(smollm2_hf, "f16")


@pytest.fixture(scope="module")
def q4(f16, tmp_path_factory) -> Path:
    from lcpp_zh.convert.quantize import quantize_gguf

    return quantize_gguf(f16, tmp_path_factory.mktemp("q") / "smollm2.Q4_K_M.gguf", "Q4_K_M", threads=2)


@pytest.fixture(scope="module")
def saved(f16, tmp_path_factory) -> Path:
    from conftest import lcpp_zh_command

    path = tmp_path_factory.mktemp("logits") / "smollm2.zh.logits"
    proc = subprocess.run([*lcpp_zh_command(), "eval", str(f16), "--save-base-logits", str(path), "--ctx", CTX,
                           "--chunks", CHUNKS, "--threads", THREADS], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert f"saved: base log-probabilities in {path}" in proc.stdout
    return path


def _eval(run_cli, *args: object) -> dict:
    proc = run_cli("eval", *args, "--threads", THREADS, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _one_line_error(proc) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr


def test_reused_file_gives_the_in_run_figures(run_cli, f16, q4, saved):
    in_run = _eval(run_cli, q4, "--base", f16, "--ctx", CTX, "--chunks", CHUNKS)
    reused = _eval(run_cli, q4, "--base-logits", saved)  # context and chunks come from the file
    assert reused["n_ctx"] == int(CTX) and reused["chunks"] == int(CHUNKS)
    assert reused["kld"] == in_run["kld"]  # the same bytes read back: every statistic identical
    assert 0 < reused["kld"]["kld_mean"] < 0.5
    fewer = _eval(run_cli, q4, "--base-logits", saved, "--chunks", "2")
    assert fewer["chunks"] == 2 and fewer["kld"]["tokens"] == 2 * 63


def test_llama_perplexity_reads_our_file_and_we_read_its(run_cli, f16, q4, saved, tmp_path):
    tool = llama_tool("llama-perplexity")

    def reference(*args: object) -> str:
        proc = subprocess.run([str(tool), "-c", CTX, "--chunks", CHUNKS, "-t", THREADS, *map(str, args)],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    def mean_kld(output: str) -> float:
        return float(re.search(r"Mean    KLD:\s+([0-9.]+)", output).group(1))

    ours = _eval(run_cli, q4, "--base-logits", saved)["kld"]
    assert mean_kld(reference("-m", q4, "--kl-divergence-base", saved, "--kl-divergence")) == pytest.approx(
        ours["kld_mean"], rel=2e-2)
    text = tmp_path / "zh.txt"
    text.write_text(builtin_text("zh"), encoding="utf-8")
    theirs = tmp_path / "theirs.kld"
    reference("-m", f16, "-f", text, "--kl-divergence-base", theirs)
    read_back = _eval(run_cli, q4, "--base-logits", theirs)["kld"]  # no lcpp-zh trailer: read all the same
    assert read_back["kld_mean"] == pytest.approx(ours["kld_mean"], rel=2e-2)
    assert read_back["ppl_base"] == pytest.approx(ours["ppl_base"], rel=2e-3)


def test_mismatched_reuse_is_refused(run_cli, q4, saved, smollm2_gguf, tiny_zh_gguf, tmp_path):
    assert "computed with --ctx 128, not 64" in _one_line_error(run_cli("eval", q4, "--base-logits", saved,
                                                                         "--ctx", "64"))
    assert "holds 4 chunks, not 9" in _one_line_error(run_cli("eval", q4, "--base-logits", saved, "--chunks", "9"))
    # The wheel's Q4_1 has the same vocabulary but is another model file than the F16 the logits come from.
    assert "holds the logits of another model" in _one_line_error(run_cli("eval", smollm2_gguf, "--base-logits",
                                                                          saved))
    assert "KL divergence needs the same vocabulary" in _one_line_error(
        run_cli("eval", tiny_zh_gguf, "--base-logits", saved))
    assert "computed on another text" in _one_line_error(run_cli("eval", q4, "--base-logits", saved, "--lang", "en"))
    junk = tmp_path / "junk.logits"
    junk.write_bytes(b"not logits at all" * 10)
    assert "not a base-logits file" in _one_line_error(run_cli("eval", q4, "--base-logits", junk))
    truncated = tmp_path / "short.logits"
    truncated.write_bytes(saved.read_bytes()[:100_000])
    assert "truncated" in _one_line_error(run_cli("eval", q4, "--base-logits", truncated))
    both = run_cli("eval", q4, "--base-logits", saved, "--base", q4)
    assert both.returncode == 2 and "give one of --base" in both.stderr
