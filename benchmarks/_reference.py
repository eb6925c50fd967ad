"""llama.cpp's own converter for the benchmarks: the test suite's copy, extracted from the pinned
llama-cpp-python sdist into the test cache (never committed)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fixtures.reference import reference_dir  # noqa: E402


def reference_converter() -> Path:
    """Path to convert_hf_to_gguf.py (with its conversion/ and gguf-py/ beside it)."""
    return reference_dir() / "convert_hf_to_gguf.py"
