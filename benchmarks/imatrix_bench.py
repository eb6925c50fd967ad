"""Importance-matrix benchmark: `lcpp-zh imatrix` vs llama.cpp's llama-imatrix on the same model, text, context,
chunk count and threads, each as its own process. Prints wall times, the speed ratio (target >= 0.9x) and how
far the two matrices differ (per tensor ||ours - theirs|| / ||theirs||, target < 1e-3; counts must be equal).
llama-imatrix runs with --no-ppl by default (the same work as ours; --with-ppl adds its perplexity pass).
The model defaults to SmolLM2-135M-Instruct converted to F16 by lcpp-zh (built once into the bench cache).
    python benchmarks/imatrix_bench.py [--model F16.gguf] [--ctx 512] [--chunks 16] [--threads 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import platformdirs

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("LCPP_ZH_BENCH_CACHE") or platformdirs.user_cache_dir("lcpp-zh-bench", appauthor=False))


def tools_dir() -> Path | None:
    if os.environ.get("LLAMA_CPP_TOOLS"):
        return Path(os.environ["LLAMA_CPP_TOOLS"])
    marker = Path(sys.prefix) / ".llama-cpp-tools"
    return Path(marker.read_text(encoding="utf-8").strip()) if marker.is_file() else None


def default_model() -> Path:
    """SmolLM2-135M-Instruct as F16, converted by lcpp-zh from the test suite's Hugging Face export."""
    out = CACHE / "SmolLM2-135M-Instruct.f16.gguf"
    if not out.is_file():
        sys.path.insert(0, str(ROOT / "tests"))
        from fixtures.smollm2 import smollm2_hf_dir
        from lcpp_zh.convert.pipeline import convert_checkpoint

        CACHE.mkdir(parents=True, exist_ok=True)
        convert_checkpoint(smollm2_hf_dir(), out, outtype="f16")
    return out


def timed(command: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds user + system) of one child process."""
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.monotonic() - started
    if status != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{process.stderr.read().decode()[-2000:]}")
    process.stderr.close()
    return elapsed, usage.ru_utime + usage.ru_stime


def compare(ours: Path, theirs: Path) -> dict[str, object]:
    from lcpp_zh.convert.imatrix_file import read_imatrix

    a, b = read_imatrix(ours), read_imatrix(theirs)
    errors = [float(np.linalg.norm(a.sums[n].astype(np.float64) - b.sums[n]) / np.linalg.norm(b.sums[n]))
              for n in b.names() if n in a.sums]
    return {"same_tensors": a.names() == b.names(), "tensors": len(b.names()),
            "counts_equal": all(n in a.counts and np.array_equal(a.counts[n], b.counts[n]) for n in b.names()),
            "rel_error_max": max(errors), "rel_error_median": float(np.median(errors)),
            "chunks": (a.chunk_count, b.chunk_count)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="F16/F32 GGUF [default: SmolLM2-135M F16]")
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the fastest counts")
    parser.add_argument("--with-ppl", action="store_true", help="let llama-imatrix compute its perplexity too")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()

    tools = tools_dir()
    reference = tools / "llama-imatrix" if tools else None
    model = (args.model or default_model()).resolve()
    lcpp_zh = Path(sys.executable).parent / "lcpp-zh"
    with tempfile.TemporaryDirectory(prefix="imatrix-bench-") as folder:
        work = Path(folder)
        from lcpp_zh.eval.texts import builtin_text

        (work / "zh.txt").write_text(builtin_text("zh"), encoding="utf-8")
        common = ["--ctx", str(args.ctx), "--chunks", str(args.chunks), "--threads", str(args.threads)]
        ours_cmd = [str(lcpp_zh), "imatrix", str(model), "--text", "zh.txt", *common, "-o", "ours.gguf", "-q"]
        theirs_cmd = None
        if reference and reference.is_file():
            theirs_cmd = [str(reference), "-m", str(model), "-f", "zh.txt", "-c", str(args.ctx), "--chunks",
                          str(args.chunks), "-t", str(args.threads), "-o", "theirs.gguf",
                          *([] if args.with_ppl else ["--no-ppl"])]
        ours_times, theirs_times = [], []
        for _ in range(args.repeat):  # alternate, so that load on a shared machine hits both alike
            ours_times.append(timed(ours_cmd, work))
            if theirs_cmd:
                theirs_times.append(timed(theirs_cmd, work))
        result: dict[str, object] = {
            "model": str(model), "ctx": args.ctx, "chunks": args.chunks, "threads": args.threads,
            "tokens": args.ctx * args.chunks, "ours_s": [round(t, 2) for t, _ in ours_times],
            "ours_cpu_s": [round(c, 2) for _, c in ours_times]}
        if theirs_cmd:
            result["llama_imatrix_s"] = [round(t, 2) for t, _ in theirs_times]
            result["llama_imatrix_cpu_s"] = [round(c, 2) for _, c in theirs_times]
            # >= 0.9 is the target: best wall time of theirs over ours (and the same for CPU time, which a
            # busy machine disturbs less)
            result["speed_ratio"] = round(min(theirs_times)[0] / min(ours_times)[0], 3)
            result["cpu_ratio"] = round(min(c for _, c in theirs_times) / min(c for _, c in ours_times), 3)
            result.update(compare(work / "ours.gguf", work / "theirs.gguf"))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"model {model.name}, {args.chunks} chunks x {args.ctx} tokens, {args.threads} threads, best of {args.repeat}")
    def runs(times: list[tuple[float, float]]) -> str:
        return (f"{min(times)[0]:7.2f} s wall, {min(c for _, c in times):7.2f} s CPU   (runs: "
                + ", ".join(f"{t:.2f}/{c:.2f}" for t, c in times) + ")")

    print(f"  lcpp-zh imatrix : {runs(ours_times)}")
    if not theirs_cmd:
        print("  llama-imatrix   : skipped (set LLAMA_CPP_TOOLS or run `make tools`)")
        return
    print(f"  llama-imatrix   : {runs(theirs_times)}" + ("" if args.with_ppl else "  --no-ppl"))
    print(f"  speed ratio     : {result['speed_ratio']:.3f}x llama-imatrix by wall time, {result['cpu_ratio']:.3f}x "
          "by CPU time (target >= 0.9x)")
    print(f"  matrices        : {result['tensors']} tensors, same set {result['same_tensors']}, counts equal "
          f"{result['counts_equal']}, relative error max {result['rel_error_max']:.2e}, median "
          f"{result['rel_error_median']:.2e} (target < 1e-3)")


if __name__ == "__main__":
    main()
