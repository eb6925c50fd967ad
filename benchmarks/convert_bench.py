"""Conversion benchmark: lcpp-zh vs llama.cpp's convert_hf_to_gguf.py on a generated 1.1 B checkpoint.

Both convert the same f16 safetensors checkpoint (2.05 GiB) to f16 in the same run; prints wall time and
peak RSS of each and the ratios (targets: time <= 1.0x, peak RSS <= 0.5x the reference).
The reference converter comes from the llama-cpp-python sdist (downloaded once into the cache).
    python benchmarks/convert_bench.py [--keep] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import platformdirs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _checkpoint import LLAMA_1B, write_checkpoint  # noqa: E402
from _reference import reference_converter  # noqa: E402

# The generated checkpoint is kept between runs, in the platform's user cache folder (~/.cache on Linux).
CACHE = Path(os.environ.get("LCPP_ZH_BENCH_CACHE") or platformdirs.user_cache_dir("lcpp-zh-bench", appauthor=False))


def train_tokenizer(folder: Path) -> Path:
    import sentencepiece

    model = folder / "bench_tok.model"
    if not model.is_file():
        corpus = folder / "corpus.txt"
        corpus.write_text("\n".join(f"样本 文本 {i} sample text number {i} 机器学习" for i in range(3000)))
        sentencepiece.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(folder / "bench_tok"), vocab_size=400, model_type="bpe",
            byte_fallback=True, minloglevel=2)
    return model


def measure(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one child process."""
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.monotonic() - started
    if status != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{process.stderr.read().decode()[-2000:]}")
    return elapsed, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each converter (best is reported)")
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoint in the cache")
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    checkpoint = CACHE / "llama-1.1b-f16"
    if not (checkpoint / "model.safetensors").is_file():
        print("generating a 1.1 B-parameter f16 checkpoint ...", flush=True)
        write_checkpoint(checkpoint, LLAMA_1B, train_tokenizer(CACHE))
    size = (checkpoint / "model.safetensors").stat().st_size
    out = Path(tempfile.mkdtemp(prefix="convert-bench-", dir=CACHE))
    ours = [sys.executable, "-m", "lcpp_zh.cli", "convert", str(checkpoint), "-o", str(out / "ours.gguf"),
            "--outtype", "f16", "--quiet"]
    reference = [sys.executable, str(reference_converter()), str(checkpoint), "--outfile", str(out / "ref.gguf"),
                 "--outtype", "f16"]
    results: dict[str, list[tuple[float, float]]] = {"lcpp-zh": [], "llama.cpp convert_hf_to_gguf.py": []}
    try:
        for _ in range(args.repeat):
            for name, command in (("llama.cpp convert_hf_to_gguf.py", reference), ("lcpp-zh", ours)):
                results[name].append(measure(command))
        identical = (out / "ours.gguf").read_bytes() == (out / "ref.gguf").read_bytes()
    finally:
        shutil.rmtree(out)
        if not args.keep:
            shutil.rmtree(checkpoint)
    print(f"\ncheckpoint: 1.1 B parameters, {size / 2**30:.2f} GiB f16 safetensors -> f16 GGUF, {os.cpu_count()} CPUs")
    print(f"{'converter':<34} {'wall s (best)':>14} {'peak RSS MiB':>13}")
    best = {}
    for name, runs in results.items():
        best[name] = (min(r[0] for r in runs), max(r[1] for r in runs))
        print(f"{name:<34} {best[name][0]:>14.2f} {best[name][1]:>13.0f}")
    ours_t, ours_m = best["lcpp-zh"]
    ref_t, ref_m = best["llama.cpp convert_hf_to_gguf.py"]
    print(f"\ntime ratio  lcpp-zh / reference: {ours_t / ref_t:.2f}x (target <= 1.0x)")
    print(f"RSS ratio   lcpp-zh / reference: {ours_m / ref_m:.2f}x (target <= 0.5x)")
    print(f"outputs byte-identical: {identical}")


if __name__ == "__main__":
    main()
