"""Install the gguf-py that llama.cpp itself uses: the copy vendored in the llama-cpp-python sdist we pin.

PyPI's gguf 0.19.0 carries the same version number but predates the vendored copy (it writes fewer
tokenizer keys, e.g. no add_eos_token for byte-level BPE). Converting with the vendored copy is what
makes our GGUF files byte-identical to llama.cpp's converter of the same release.
    python scripts/install_gguf_py.py      (run by `make install`)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pinned_version() -> str:
    """The llama-cpp-python version pyproject.toml pins (read as scripts/llama-cpp-python-pin.sh reads it)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'^\s*"llama-cpp-python==([0-9][0-9A-Za-z.+-]*)"', text, re.M)
    if not match:
        sys.exit("pyproject.toml pins no llama-cpp-python version")
    return match.group(1)


VERSION = pinned_version()
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"


def cache_dir() -> Path:
    """lcpp-zh's cache folder, as lcpp_zh.resolve.cache_dir finds it (the test suite and
    build-llama-cpp-tools.sh look for the sdist there too). Computed here without importing lcpp_zh, and
    without platformdirs when it is not installed yet: the same $XDG_CACHE_HOME or ~/.cache on Linux."""
    if os.environ.get("LCPP_ZH_CACHE"):
        return Path(os.environ["LCPP_ZH_CACHE"]).expanduser()
    try:
        import platformdirs
    except ImportError:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lcpp-zh"
    return Path(platformdirs.user_cache_dir("lcpp-zh", appauthor=False))


def sdist_path() -> Path:
    """The llama-cpp-python sdist, downloaded once (pip serves it from its own cache after the build)."""
    folder = cache_dir() / "sdist"
    path = folder / SDIST
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "-d", str(folder), f"llama-cpp-python=={VERSION}"], check=True)
    return path


def main() -> None:
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/gguf-py/"
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(sdist_path()) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(prefix)]
        archive.extractall(tmp, members=members, filter="data")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
                        str(Path(tmp) / prefix)], check=True)
    print(f"installed gguf-py from llama-cpp-python {VERSION}'s llama.cpp", file=sys.stderr)


if __name__ == "__main__":
    main()
