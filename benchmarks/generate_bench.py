"""Generation benchmark: `lcpp-zh generate` vs llama-cpp-python's Llama.create_completion (its defaults) vs
llama.cpp's llama-bench tg128, same GGUF, same prompt, in one run.

Prints tokens/s and time to first token of each and the ratios (targets: >= 1.0x llama-cpp-python,
>= 0.7x llama-bench tg128). llama-bench comes from $LLAMA_CPP_TOOLS (built by
`make tools`; skipped when absent). Default model: SmolLM2-135M-Instruct.
    python benchmarks/generate_bench.py [--model M.gguf] [--tokens 128] [--repeat 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

PROMPT = "Once upon a time, in a quiet village at the foot of the mountains, there lived an old clockmaker who"


def lcpp_zh_generate(model: Path, n: int, threads: int, gpu_layers: str = "0", extra: tuple[str, ...] = (),
                     prompt: str = PROMPT) -> dict:
    """The real command, as a user runs it; its --json reports TTFT and tokens/s measured inside."""
    exe = Path(sys.executable).parent / "lcpp-zh"
    cmd = [str(exe), "generate", str(model), prompt, "--raw", "--json", "--max-new-tokens", str(n),
           "--threads", str(threads), "--gpu-layers", gpu_layers, "--temperature", "0", "--repeat-penalty", "1",
           *extra]
    started = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - started
    data = json.loads(out)
    return {"tps": data["tokens_per_s"], "ttft": data["ttft_s"], "n": data["completion_tokens"], "wall": wall,
            "prompt_tokens": data["prompt_tokens"]}


def llama_cpp_python(model: Path, n: int) -> dict:
    """Llama.create_completion with llama-cpp-python's defaults (threads, flash attention, sampling)."""
    from llama_cpp import Llama

    llm = Llama(str(model), verbose=False)
    try:
        started = time.perf_counter()
        first = None
        count = 0
        for chunk in llm.create_completion(PROMPT, max_tokens=n, temperature=0, repeat_penalty=1.0, stream=True):
            if chunk["choices"][0]["finish_reason"] is not None:
                continue  # the closing chunk carries no token
            count += 1
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
    finally:
        llm.close()
    return {"tps": (count - 1) / (end - first) if count > 1 else 0.0, "ttft": first - started, "n": count,
            "threads": llm.n_threads}


def llama_bench(model: Path, n: int, threads: int, ngl: int = 0, exe: Path | None = None) -> dict | None:
    """llama-bench tg<n> (no prompt), from `exe` or $LLAMA_CPP_TOOLS; None when there is none."""
    folder = os.environ.get("LLAMA_CPP_TOOLS")
    exe = exe or (Path(folder) / "llama-bench" if folder else None)
    if exe is None or not exe.is_file():
        return None
    out = subprocess.run([str(exe), "-m", str(model), "-p", "0", "-n", str(n), "-t", str(threads), "-r", "3",
                          "-ngl", str(ngl), "-o", "json"], capture_output=True, text=True, check=True).stdout
    runs = [r for r in json.loads(out) if r.get("n_gen") == n]
    return {"tps": runs[0]["avg_ts"], "n": n}


def default_model() -> Path:
    from fixtures.smollm2 import smollm2_gguf_path

    return smollm2_gguf_path()


def main() -> None:
    from lcpp_zh.common.system import physical_cores

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=physical_cores())
    args = parser.parse_args()
    model = args.model or default_model()
    print(f"model {model.name}, prompt of {len(PROMPT)} chars, {args.tokens} new tokens, {args.threads} threads, "
          f"median of {args.repeat}", flush=True)
    ours, ref = [], []
    for _ in range(args.repeat):  # interleaved, so a busy machine slows both alike
        ours.append(lcpp_zh_generate(model, args.tokens, args.threads))
        ref.append(llama_cpp_python(model, args.tokens))
    bench = llama_bench(model, args.tokens, args.threads)

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    print(f"lcpp-zh generate           {med(ours, 'tps'):7.1f} tokens/s   TTFT {med(ours, 'ttft') * 1000:6.1f} ms"
          f"   ({ours[0]['n']} tokens, whole command {med(ours, 'wall'):.2f} s with model load)")
    print(f"llama-cpp-python defaults  {med(ref, 'tps'):7.1f} tokens/s   TTFT {med(ref, 'ttft') * 1000:6.1f} ms"
          f"   ({ref[0]['n']} tokens, n_threads={ref[0]['threads']})")
    print(f"ratio vs llama-cpp-python  {med(ours, 'tps') / med(ref, 'tps'):7.2f}x tokens/s (target >= 1.0x), "
          f"TTFT {med(ours, 'ttft') / med(ref, 'ttft'):.2f}x")
    if bench is None:
        print("llama-bench: skipped (set LLAMA_CPP_TOOLS to the folder built by build-llama-cpp-tools)")
    else:
        print(f"llama-bench tg{args.tokens}            {bench['tps']:7.1f} tokens/s")
        print(f"ratio vs llama-bench       {med(ours, 'tps') / bench['tps']:7.2f}x tokens/s (target >= 0.7x)")


if __name__ == "__main__":
    main()
