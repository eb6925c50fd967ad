"""The llama-cpp-python version lcpp-zh pins, read from its installed metadata (pyproject.toml's dependency,
the one place it is written; the Makefile and scripts read pyproject.toml through scripts/llama-cpp-python-pin.sh).
"""

from __future__ import annotations

import functools
import importlib.metadata
import re

_PIN = re.compile(r"^llama[-_.]cpp[-_.]python\s*==\s*([0-9][0-9A-Za-z.+-]*)", re.IGNORECASE)


@functools.cache
def llama_cpp_python_pin() -> str:
    """`0.3.36`: the version of llama-cpp-python (and of the llama.cpp it vendors) lcpp-zh was built for."""
    for requirement in importlib.metadata.requires("lcpp-zh") or ():
        match = _PIN.match(requirement)
        if match:
            return match.group(1)
    raise RuntimeError("lcpp-zh's metadata pins no llama-cpp-python version: reinstall lcpp-zh")
