"""`lcpp-zh eval` against llama.cpp's own llama-perplexity (built by `make tools`) on SmolLM2: the same
perplexity, and with --base the same KL-divergence statistics, on the same file, text and context.

Small contexts and few chunks, so each run takes seconds. The built-in texts are checked for size and origin.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from fixtures.llama_tools import llama_tool
from lcpp_zh.eval.texts import BUILTIN_TEXTS, builtin_text

CTX, CHUNKS, THREADS = "128", "6", "2"


def _llama_perplexity(*args: object) -> str:
    tool = llama_tool("llama-perplexity")
    proc = subprocess.run([str(tool), "-c", CTX, "--chunks", CHUNKS, "-t", THREADS, *map(str, args)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _number(pattern: str, output: str) -> float:
    match = re.search(pattern, output)
    assert match, f"{pattern!r} not in llama-perplexity's output:\n{output[-3000:]}"
    return float(match.group(1))


@pytest.fixture(scope="module")
def en_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "en.txt"
    path.write_text(builtin_text("en"), encoding="utf-8")
    return path


def _ours(run_cli, *args: object) -> dict:
    proc = run_cli("eval", *args, "--ctx", CTX, "--chunks", CHUNKS, "--threads", THREADS, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_perplexity_matches_llama_perplexity(run_cli, smollm2_gguf, en_file):
    reference = _llama_perplexity("-m", smollm2_gguf, "-f", en_file)
    ppl = _number(r"Final estimate: PPL = ([0-9.]+)", reference)
    error = _number(r"Final estimate: PPL = [0-9.]+ \+/- ([0-9.]+)", reference)
    ours = _ours(run_cli, smollm2_gguf, "--text", en_file)
    assert ours["chunks"] == int(CHUNKS) and ours["tokens_scored"] == int(CHUNKS) * 63
    assert ours["ppl"] == pytest.approx(ppl, rel=2e-3)  # the issue asks for 1 %; it is the same computation
    assert ours["ppl_error"] == pytest.approx(error, rel=1e-2)


def test_kl_divergence_matches_llama_perplexity(run_cli, smollm2_gguf, smollm2_hf, converted, en_file, tmp_path):
    """Q4_1 from the wheel against the F16 converted here, as llama-perplexity --kl-divergence sees it."""
    base = converted(smollm2_hf, "f16")
    saved = tmp_path / "base.kld"
    _llama_perplexity("-m", base, "-f", en_file, "--kl-divergence-base", saved)
    reference = _llama_perplexity("-m", smollm2_gguf, "--kl-divergence-base", saved, "--kl-divergence")
    ours = _ours(run_cli, smollm2_gguf, "--base", base, "--text", en_file)
    kld = ours["kld"]
    assert kld["kld_mean"] == pytest.approx(_number(r"Mean    KLD:\s+([0-9.]+)", reference), rel=2e-2)
    assert kld["kld_error"] == pytest.approx(_number(r"Mean    KLD:\s+[0-9.]+ ±\s+([0-9.]+)", reference), rel=5e-2)
    assert kld["kld_percentiles"]["99%"] == pytest.approx(_number(r"99\.0%   KLD:\s+([0-9.]+)", reference), rel=5e-2)
    assert kld["kld_percentiles"]["median"] == pytest.approx(_number(r"Median  KLD:\s+([0-9.]+)", reference),
                                                             rel=5e-2)
    assert 100 * kld["same_top"] == pytest.approx(_number(r"Same top p:\s+([0-9.]+)", reference), abs=0.5)
    assert 100 * kld["p_diff_rms"] == pytest.approx(_number(r"RMS Δp    :\s+([0-9.]+)", reference), rel=5e-2)
    assert kld["ppl"] == pytest.approx(_number(r"Mean PPL\(Q\)\s+:\s+([0-9.]+)", reference), rel=2e-3)
    assert kld["ppl_base"] == pytest.approx(_number(r"Mean PPL\(base\)\s+:\s+([0-9.]+)", reference), rel=2e-3)
    assert 0 < kld["kld_mean"] < 0.1 and 0.5 < kld["same_top"] <= 1  # a real quantization, not noise


def test_table_output_and_builtin_chinese_text(run_cli, tiny_zh_gguf):
    """The default text is the Chinese one; the human table names it and shows the PPL line."""
    proc = run_cli("eval", tiny_zh_gguf, "--ctx", "64", "--chunks", "2", "--threads", THREADS)
    assert proc.returncode == 0, proc.stderr
    assert "built-in zh" in proc.stdout and re.search(r"PPL: [0-9.]+ ± [0-9.]+", proc.stdout)
    assert "chunks: 2 of 64 tokens, 62 tokens scored" in proc.stdout


def test_text_too_short_is_one_line_error(run_cli, smollm2_gguf, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.", encoding="utf-8")
    proc = run_cli("eval", smollm2_gguf, "--text", short, "--ctx", CTX)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: the text is") and "needs at least 256" in proc.stderr


def test_different_vocabularies_are_refused(run_cli, smollm2_gguf, tiny_zh_gguf):
    proc = run_cli("eval", smollm2_gguf, "--base", tiny_zh_gguf, "--ctx", "64", "--chunks", "2")
    assert proc.returncode == 1
    assert "KL divergence needs the same vocabulary" in proc.stderr


@pytest.mark.parametrize("name", sorted(BUILTIN_TEXTS))
def test_builtin_texts_are_long_and_licensed(name):
    from importlib import resources

    from lcpp_zh.eval.texts import SOURCES

    text = builtin_text(name)
    assert len(text) >= 50_000
    # Package data, byte for byte: the .txt file beside the module is the text (no Python string in between).
    assert resources.files("lcpp_zh.eval.texts").joinpath(f"{name}.txt").read_bytes() == text.encode("utf-8")
    # Where it comes from and why it may ship: the package it was taken from and its public-domain status.
    assert "public domain" in SOURCES[name] and "npm package" in SOURCES[name]
    if name == "zh":
        han = sum("\u4e00" <= ch <= "\u9fff" for ch in text)
        assert han / len(text) > 0.7 and "学而时习之" in text and "关关雎鸠" in text
    else:
        assert text.isascii() or sum(ch.isascii() for ch in text) / len(text) > 0.99


def test_progress_bar_on_a_terminal(smollm2_gguf):
    """On a terminal, stderr shows a bar counting chunks; the table still comes at the end."""
    import os
    import sys

    import pexpect
    from conftest import lcpp_zh_command

    command = [*lcpp_zh_command(), "eval", str(smollm2_gguf), "--lang", "en", "--ctx", CTX, "--chunks", "3",
               "--threads", THREADS, "--batch", CTX]  # one chunk per decode, so the bar moves
    child = pexpect.spawn(command[0], command[1:], env={**os.environ, "TERM": "xterm"}, encoding="utf-8",
                          timeout=300, dimensions=(24, 120))
    child.logfile_read = sys.stdout if os.environ.get("LCPP_ZH_TEST_VERBOSE") else None
    child.expect(r"model: +\d+%.*\d/3 \[")  # tqdm: "model:  33%|███▎      | 1/3 [00:01<00:02, ..."
    child.expect(r"PPL: [0-9.]+")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
