"""llama.cpp's own converter, extracted from the llama-cpp-python sdist into a cache folder (never committed)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

VERSION = "0.3.36"
CACHE = Path(os.environ.get("LCPP_ZH_BENCH_CACHE", Path.home() / ".cache" / "lcpp-zh-bench"))


def reference_converter() -> Path:
    """Path to convert_hf_to_gguf.py (with its conversion/ and gguf-py/ beside it)."""
    root = CACHE / f"llama.cpp-{VERSION}"
    script = root / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    sdist = CACHE / f"llama_cpp_python-{VERSION}.tar.gz"
    if not sdist.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "-d", str(CACHE), f"llama-cpp-python=={VERSION}"], check=True)
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers()
                   if m.name.startswith(prefix) and m.name[len(prefix):].startswith(wanted)]
        for member in members:
            member.name = member.name[len(prefix):]
        archive.extractall(root, members=members, filter="data")
    return script
