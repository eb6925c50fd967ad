"""Full-offload generation on the GPU: `lcpp-zh generate --gpu-layers all` vs llama.cpp's llama-bench tg128
with every layer offloaded (-ngl 99), same GGUF, in one run (target >= 0.9x). Run by scripts/gpu-check.sh,
which builds both against the same CUDA libraries; prints one summary line. Default model: SmolLM2-135M.
    python benchmarks/gpu_bench.py --llama-bench PATH [--model M.gguf] [--tokens 128] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_bench import default_model, lcpp_zh_generate, llama_bench  # noqa: E402

TARGET = 0.9


def main() -> None:
    from lcpp_zh.common.system import physical_cores

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-bench", type=Path, default=None, help="llama-bench built with the same flags")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=physical_cores())
    args = parser.parse_args()
    model = args.model or default_model()
    ours = statistics.median(lcpp_zh_generate(model, args.tokens, args.threads, "all")["tps"]
                             for _ in range(args.repeat))
    ref = llama_bench(model, args.tokens, args.threads, ngl=99, exe=args.llama_bench)
    head = f"tg{args.tokens}:      lcpp-zh {ours:.1f} tokens/s (median of {args.repeat}, {model.name})"
    if ref is None:
        print(f"{head}; llama-bench: skipped (not found; pass --llama-bench or set LLAMA_CPP_TOOLS)")
        return
    ratio = ours / ref["tps"]
    print(f"{head}, llama-bench {ref['tps']:.1f} tokens/s: {ratio:.2f}x "
          f"(target >= {TARGET}x: {'met' if ratio >= TARGET else 'MISSED'})")


if __name__ == "__main__":
    main()
