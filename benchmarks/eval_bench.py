"""Perplexity and KL-divergence benchmark: `lcpp-zh eval` against llama.cpp's llama-perplexity on the same
model, text, context, chunk count and threads, each run as its own process, alternately. Prints the best wall
time of each, the speed ratios (target >= 0.9x) and both tools' PPL and mean KLD, which must agree.

The KLD reference is llama-perplexity's two runs (--kl-divergence-base on the F16, then --kl-divergence);
llama-perplexity comes from $LLAMA_CPP_TOOLS (`make tools`) and its rows are skipped when it is absent.
Models default to SmolLM2-135M-Instruct Q4_1 (the test fixture) and its F16. A benchmark: it asserts nothing.
    python benchmarks/eval_bench.py [--model Q.gguf --base F16.gguf] [--ctx 512] [--chunks 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_bench import default_model as quantized_model  # noqa: E402
from imatrix_bench import default_model as f16_model  # noqa: E402
from imatrix_bench import tools_dir  # noqa: E402

from lcpp_zh.common.system import physical_cores  # noqa: E402

LCPP_ZH = Path(sys.executable).parent / "lcpp-zh"


def run(command: list[str], cwd: Path) -> tuple[float, str]:
    """(wall seconds, stdout + stderr) of one child process; stops the benchmark when it fails."""
    started = time.monotonic()
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, errors="replace")
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{(proc.stdout + proc.stderr)[-2000:]}")
    return elapsed, proc.stdout + proc.stderr


def llama_perplexity_figures(output: str) -> dict[str, float]:
    """PPL and mean KLD from llama-perplexity's summary ("Final estimate: PPL = 12.9427", "Mean    KLD: ...")."""
    figures: dict[str, float] = {}
    if match := re.search(r"Final estimate: PPL = ([0-9.]+)", output):
        figures["ppl"] = float(match.group(1))
    if match := re.search(r"Mean\s+KLD:\s+([-0-9.]+)", output):
        figures["mean_kld"] = float(match.group(1))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="quantized GGUF [default: SmolLM2 Q4_1]")
    parser.add_argument("--base", type=Path, default=None, help="its F16 [default: SmolLM2 F16]")
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--threads", type=int, default=physical_cores())
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the fastest counts")
    args = parser.parse_args()
    model = (args.model or quantized_model()).resolve()
    base = (args.base or f16_model()).resolve()
    tools = tools_dir()
    reference = tools / "llama-perplexity" if tools else None
    have_reference = bool(reference and reference.is_file())
    common = ["--ctx", str(args.ctx), "--chunks", str(args.chunks), "--threads", str(args.threads)]
    theirs_common = ["-f", "en.txt", "-c", str(args.ctx), "--chunks", str(args.chunks), "-t", str(args.threads)]
    result: dict[str, object] = {"model": model.name, "base": base.name, "ctx": args.ctx, "chunks": args.chunks,
                                 "threads": args.threads}
    with tempfile.TemporaryDirectory(prefix="eval-bench-") as folder:
        work = Path(folder)
        from lcpp_zh.eval.texts import builtin_text

        (work / "en.txt").write_text(builtin_text("en"), encoding="utf-8")
        ours_ppl, ours_kld, theirs_ppl, theirs_kld = [], [], [], []
        for _ in range(args.repeat):  # alternate, so that load on a shared machine hits both alike
            seconds, out = run([str(LCPP_ZH), "eval", str(model), "--text", "en.txt", *common, "--json"], work)
            ours_ppl.append(seconds)
            result["ours_ppl"] = json.loads(out[out.index("{"):]).get("ppl")
            seconds, out = run([str(LCPP_ZH), "eval", str(model), "--base", str(base), "--text", "en.txt", *common,
                                "--json"], work)
            ours_kld.append(seconds)
            result["ours_mean_kld"] = (json.loads(out[out.index("{"):]).get("kld") or {}).get("kld_mean")
            if not have_reference:
                continue
            seconds, out = run([str(reference), "-m", str(model), *theirs_common], work)
            theirs_ppl.append(seconds)
            result["llama_perplexity_ppl"] = llama_perplexity_figures(out).get("ppl")
            first, _ = run([str(reference), "-m", str(base), *theirs_common, "--kl-divergence-base", "base.kld"], work)
            second, out = run([str(reference), "-m", str(model), *theirs_common, "--kl-divergence-base", "base.kld",
                               "--kl-divergence"], work)
            theirs_kld.append(first + second)
            result["llama_perplexity_mean_kld"] = llama_perplexity_figures(out).get("mean_kld")
    result["ours_ppl_s"], result["ours_kld_s"] = round(min(ours_ppl), 2), round(min(ours_kld), 2)
    if have_reference:
        result["llama_perplexity_ppl_s"], result["llama_perplexity_kld_s"] = round(min(theirs_ppl), 2), round(
            min(theirs_kld), 2)
        # >= 0.9 is the target: their best wall time over ours.
        result["ppl_speed_ratio"] = round(min(theirs_ppl) / min(ours_ppl), 3)
        result["kld_speed_ratio"] = round(min(theirs_kld) / min(ours_kld), 3)
    else:
        result["llama_perplexity"] = "skipped: no llama-perplexity (run `make tools` or set LLAMA_CPP_TOOLS)"
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
