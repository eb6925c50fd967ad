"""`lcpp-zh quants`, the quantization advisor, run for real on SmolLM2's F16 with a short type list and a tiny
evaluation: its sizes and bits per weight against the files and llama.cpp's own count, its PPL and KLD against
llama-perplexity --kl-divergence on the same files and text, the PNG, --json, the terminal plot, and one-line
errors for hostile input. The choice itself is a pure function, tested on made-up figures.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from fixtures.llama_tools import llama_tool
from lcpp_zh.eval.advisor.pick import Candidate, parse_memory, recommend
from lcpp_zh.eval.advisor.plot import PlotPoint, render_terminal
from lcpp_zh.eval.texts import builtin_text

CTX, CHUNKS, THREADS = "128", "4", "2"
TYPES = ("Q8_0", "Q4_K_M", "Q2_K")
GB = 10**9


def _quants(*args: object, timeout: float = 900, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    from conftest import lcpp_zh_command

    return subprocess.run([*lcpp_zh_command(), "quants", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def no_matplotlib(tmp_path_factory) -> dict[str, str]:
    """An environment in which `import matplotlib` fails, as where the `plot` extra is not installed: a package
    of that name first on the path that raises ModuleNotFoundError, as Python does for a missing one."""
    import os

    folder = tmp_path_factory.mktemp("no-matplotlib")
    (folder / "matplotlib").mkdir()
    (folder / "matplotlib" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'matplotlib'\", name='matplotlib')\n", encoding="utf-8")
    path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


@pytest.fixture(scope="module")
def f16(smollm2_hf, converted) -> Path:
    return converted(smollm2_hf, "f16")


@pytest.fixture(scope="module")
def run(f16, tmp_path_factory) -> dict:
    """One advisor run: the JSON report, the --keep folder and the PNG."""
    folder = tmp_path_factory.mktemp("quants")
    keep, png = folder / "keep", folder / "plot.png"
    proc = _quants(f16, "--types", ",".join(TYPES), "--ctx", CTX, "--chunks", CHUNKS, "--threads", THREADS,
                   "--pp", "16", "--tg", "8", "--memory", "8GB", "--keep", keep, "--plot", png, "--json")
    assert proc.returncode == 0, proc.stderr
    return {"report": json.loads(proc.stdout), "keep": keep, "png": png}


def _rows(report: dict) -> dict[str, dict]:
    return {r["type"]: r for r in report["rows"] if not r["base"]}


@pytest.fixture(scope="module")
def reference(run, f16, tmp_path_factory) -> dict[str, str]:
    """llama-perplexity --kl-divergence's output for each kept file, against the F16 on the same text."""
    tool = llama_tool("llama-perplexity")
    folder = tmp_path_factory.mktemp("reference")
    text = folder / "zh.txt"
    text.write_text(builtin_text("zh"), encoding="utf-8")

    def perplexity(*args: object) -> str:
        proc = subprocess.run([str(tool), "-c", CTX, "--chunks", CHUNKS, "-t", THREADS, "-lv", "4", *map(str, args)],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    base = folder / "base.kld"
    perplexity("-m", f16, "-f", text, "--kl-divergence-base", base)
    return {name: perplexity("-m", row["path"], "--kl-divergence-base", base, "--kl-divergence")
            for name, row in _rows(run["report"]).items()}


def _number(pattern: str, output: str) -> float:
    match = re.search(pattern, output)
    assert match, f"{pattern!r} not in llama-perplexity's output:\n{output[-3000:]}"
    return float(match.group(1))


def test_sizes_and_bits_per_weight_match_the_files(run, reference):
    rows = _rows(run["report"])
    assert list(rows) == sorted(TYPES, key=lambda t: rows[t]["size"])  # the table goes by size
    for name, row in rows.items():
        path = Path(row["path"])
        assert path.parent == run["keep"] and path.name.endswith(f".{name}.gguf")
        assert row["size"] == path.stat().st_size
        # llama.cpp's own count: "print_info: file size = 98.87 MiB (6.17 BPW)"
        assert row["bpw"] == pytest.approx(_number(r"file size\s+=\s+[0-9.]+ \w+ \(([0-9.]+) BPW\)",
                                                   reference[name]), abs=0.006)
        assert row["needed"] > row["size"] and row["fits"] is True
    base = run["report"]["rows"][0]
    assert base["base"] and base["type"] == "F16" and base["bpw"] == pytest.approx(16.0, abs=0.01)


def test_figures_match_llama_perplexity(run, reference):
    for name, row in _rows(run["report"]).items():
        output = reference[name]
        assert row["ppl"] == pytest.approx(_number(r"Mean PPL\(Q\)\s+:\s+([0-9.]+)", output), rel=2e-2), name
        assert row["kld_mean"] == pytest.approx(_number(r"Mean    KLD:\s+([0-9.]+)", output), rel=2e-2), name
        assert 100 * row["same_top"] == pytest.approx(_number(r"Same top p:\s+([0-9.]+)", output), abs=1.0), name
    base_ppl = _number(r"Mean PPL\(base\)\s+:\s+([0-9.]+)", reference["Q8_0"])
    assert run["report"]["rows"][0]["ppl"] == pytest.approx(base_ppl, rel=2e-2)


def test_quality_order_speed_and_recommendation(run):
    report = run["report"]
    rows = _rows(report)
    assert rows["Q8_0"]["kld_mean"] < rows["Q4_K_M"]["kld_mean"] < rows["Q2_K"]["kld_mean"]
    assert rows["Q8_0"]["same_top"] > rows["Q2_K"]["same_top"]
    assert all(r["pp_tok_s"] > 0 and r["tg_tok_s"] > 0 for r in report["rows"])
    assert report["memory"] == 8 * GB and report["kv_ctx"] == 4096
    assert report["recommendation"]["choice"] == "Q8_0"  # all three fit in 8 GB: the lowest KLD wins
    assert report["plot"] == str(run["png"])


def test_png_has_the_points(run):
    from PIL import Image

    png = run["png"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        assert image.size == (960, 600)
        pixels = list(image.convert("RGB").getdata())

    def count(rgb: tuple[int, int, int]) -> int:
        return sum(1 for p in pixels if all(abs(a - b) < 12 for a, b in zip(p, rgb, strict=True)))

    assert count((31, 119, 180)) > 2 * 40  # two blue points (Q4_K_M, Q2_K), some 80 pixels each
    assert count((214, 39, 40)) > 200  # the red star of the recommended type (and the legend's)


def test_table_terminal_plot_and_reused_logits(run, f16, no_matplotlib, tmp_path):
    """The human output: aligned table, recommendation line, terminal plot; the kept base logits are reused.
    Without matplotlib (no `plot` extra) the terminal plot is the default, with a line on how to get the PNG."""
    proc = _quants(f16, "--types", "Q8_0,Q2_K", "--ctx", CTX, "--chunks", CHUNKS, "--threads", THREADS,
                   "--pp", "0", "--tg", "0", "--memory", "0.75GB", "--keep", run["keep"], env=no_matplotlib,
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "reusing the base log-probabilities" in proc.stderr
    assert "for a PNG of this plot: pip install 'lcpp-zh[plot]'" in proc.stderr
    assert not list(tmp_path.iterdir())  # no quants-*.png written
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("type "))
    table = lines[header: header + 4]
    assert [line.split()[0] for line in table] == ["type", "F16", "Q2_K", "Q8_0"]
    assert len({line.index("bpw") if i == 0 else None for i, line in enumerate(table)}) >= 1
    assert len({len(line) for line in table}) == 1  # aligned columns
    q8 = _rows(run["report"])["Q8_0"]
    assert q8["needed"] > 0.75 * GB  # 145 MB + 4096 tokens of KV (~0.1 GB) + 0.54 GB overhead
    recommendation = next(line for line in lines if line.startswith("recommendation: "))
    assert recommendation.startswith("recommendation: Q2_K: best quality that fits 0.75GB")
    assert "Q8_0 needs" in recommendation
    plot = "\n".join(lines[lines.index(recommendation) + 1:])
    assert "*" in plot and " Q2_K" in plot and "|" in plot and "mean KLD (log)" in plot


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr


def test_hostile_input_is_a_one_line_error(f16, smollm2_gguf, tmp_path):
    assert "is a Q4_1 model" in _one_line_error(_quants(smollm2_gguf, "--types", "Q8_0", "--no-plot"))
    junk = tmp_path / "model.gguf"
    junk.write_bytes(b"PK\x03\x04 not a gguf at all")
    assert "not a GGUF file" in _one_line_error(_quants(junk, "--no-plot"))
    assert "no such file or folder" in _one_line_error(_quants(tmp_path / "missing", "--no-plot"))
    assert "unknown quantization type 'Q9_Z'" in _one_line_error(_quants(f16, "--types", "Q4_K_M,Q9_Z"))
    assert "not a quantization" in _one_line_error(_quants(f16, "--types", "F16"))
    assert "not a memory size" in _one_line_error(_quants(f16, "--memory", "lots"))
    assert "not a memory size" in _one_line_error(_quants(f16, "--memory", "8XB"))
    wrong_plot = _quants(f16, "--plot", "plot.svg")
    assert wrong_plot.returncode == 2 and "give a name ending in .png" in wrong_plot.stderr


def test_png_without_matplotlib_is_a_one_line_error(f16, no_matplotlib, tmp_path):
    """--plot FILE.png needs the `plot` extra: said at once, before any quantizing, and nothing is written."""
    proc = _quants(f16, "--types", "Q8_0", "--plot", tmp_path / "plot.png", "--keep", tmp_path / "keep",
                   env=no_matplotlib, timeout=120)
    message = _one_line_error(proc)
    assert "needs matplotlib" in message and "pip install 'lcpp-zh[plot]'" in message
    assert not list(tmp_path.iterdir())


def test_iq_types_use_a_matrix_computed_once(f16, tmp_path):
    """IQ types are made with one matrix computed from the F16; a user's --imatrix is used as given."""
    proc = _quants(f16, "--types", "IQ3_XXS,IQ4_XS,Q4_K_M", "--ctx", CTX, "--chunks", CHUNKS, "--threads", THREADS,
                   "--pp", "0", "--tg", "0", "--keep", tmp_path, "--no-plot", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = _rows(json.loads(proc.stdout))
    assert rows["IQ3_XXS"]["imatrix"] and rows["IQ4_XS"]["imatrix"] and not rows["Q4_K_M"]["imatrix"]
    matrices = list(tmp_path.glob("*.imatrix.gguf"))
    assert len(matrices) == 1
    import gguf

    for name in ("IQ3_XXS", "IQ4_XS"):  # llama.cpp records the matrix it quantized with
        reader = gguf.GGUFReader(rows[name]["path"])
        assert reader.fields["quantize.imatrix.file"].contents() == str(matrices[0])
    assert "quantize.imatrix.file" not in gguf.GGUFReader(rows["Q4_K_M"]["path"]).fields
    given = _quants(f16, "--types", "IQ2_XS", "--imatrix", tmp_path / "none.gguf", "--no-plot")
    assert "--imatrix" in _one_line_error(given) and "no such file" in given.stderr


@pytest.mark.parametrize(("text", "expected"), [("8GB", 8 * GB), ("8", 8 * GB), ("7.5GiB", int(7.5 * 2**30)),
                                                ("512MB", 512 * 10**6), ("16g", 16 * GB), (" 2 TB ", 2 * 10**12)])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "8XB", "-1GB", "1..5GB", "100B"])
def test_parse_memory_refuses_nonsense(text):
    from lcpp_zh.errors import LcppError

    with pytest.raises(LcppError, match="memory"):
        parse_memory(text)


LADDER = [Candidate("Q2_K", 0.40, int(3.4 * GB), 2_800), Candidate("Q4_K_M", 0.040, int(4.8 * GB), 4_100),
          Candidate("Q5_K_M", 0.015, int(5.5 * GB), 4_800), Candidate("Q6_K", 0.006, int(9.1 * GB), 5_500),
          Candidate("Q8_0", 0.001, int(7.7 * GB), 7_100)]


@pytest.mark.parametrize(("limit", "choice", "reason"), [
    (8 * GB, "Q8_0", "Q8_0: best quality that fits 8.00 GB (needs 7.70 GB, and the lowest KLD measured)"),
    (int(7.5 * GB), "Q5_K_M", "Q5_K_M: best quality that fits 7.50 GB (needs 5.50 GB); Q8_0 needs 7.70 GB"),
    (5 * GB, "Q4_K_M", "Q4_K_M: best quality that fits 5.00 GB (needs 4.80 GB); Q5_K_M needs 5.50 GB"),
    (int(3.4 * GB), "Q2_K", "Q2_K: best quality that fits 3.40 GB (needs 3.40 GB); Q4_K_M needs 4.80 GB"),
    (3 * GB, None, "none fits 3.00 GB: the smallest, Q2_K, needs 3.40 GB"),
])
def test_recommendation(limit, choice, reason):
    picked = recommend(LADDER, limit)
    assert picked.choice == choice
    assert picked.reason.startswith(reason)


def test_recommendation_ties_and_labels():
    tie = [Candidate("A", 0.01, GB, 900), Candidate("B", 0.01, GB, 800)]
    assert recommend(tie, 2 * GB).choice == "B"  # equal quality: the smaller file
    assert "fits 8GB" in recommend(LADDER, 8 * GB, "8GB").reason
    assert recommend([], GB).choice is None


def test_terminal_plot_marks_points_and_limit():
    points = [PlotPoint("Q2_K", 60_000_000, 0.5), PlotPoint("Q4_K_M", 100_000_000, 0.07, recommended=True),
              PlotPoint("Q8_0", 145_000_000, 0.005)]
    text = render_terminal(points, 120e6, width=60, height=12)
    grid = [line.split("┤", 1)[-1].split("│", 1)[-1] for line in text.splitlines()[:12]]
    assert sum(line.count("*") for line in grid) == 1 and sum(line.count("o") for line in grid) == 2
    assert sum("|" in line for line in grid) >= 10  # the limit crosses every row but where a label covers it
    assert "Q2_K" in text and "Q4_K_M" in text and "Q8_0" in text and "memory limit" in text
    star_row = next(i for i, line in enumerate(grid) if "*" in line)
    top_row = next(i for i, line in enumerate(grid) if "Q2_K" in line)
    bottom_row = next(i for i, line in enumerate(grid) if "Q8_0" in line)
    assert top_row < star_row < bottom_row  # higher KLD higher up
