"""Write a file under a temporary name beside its destination and rename it into place at the end.

An interrupted or failed write leaves neither the final name nor the temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lcpp_zh.errors import ConversionError


def check_writable(destination: Path) -> None:
    """Fail early, before any heavy work, when the destination cannot be written."""
    if destination.is_dir():
        raise ConversionError(f"{destination}: is a folder; give a file name such as model.gguf")
    parent = destination.parent
    if not parent.is_dir():
        raise ConversionError(f"{destination}: the folder {parent} does not exist")
    try:  # os.access is not enough: read-only mounts and pseudo filesystems refuse new files even to root
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise ConversionError(f"{destination}: cannot write in {parent} ({exc.strerror or exc})") from None


@contextlib.contextmanager
def atomic_path(destination: Path) -> Iterator[Path]:
    """A temporary path to write; renamed to `destination` when the block succeeds, removed otherwise."""
    check_writable(destination)
    temporary = destination.with_name(f".{destination.name}.partial-{os.getpid()}")
    try:
        yield temporary
        with open(temporary, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temporary, destination)
    except OSError as exc:
        _remove(temporary)
        raise ConversionError(f"{exc.filename or destination}: {exc.strerror or exc}") from None
    except BaseException:
        _remove(temporary)
        raise


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
