"""Write a file under a temporary name beside its destination, fsync it and rename it into place at the end.

An interrupted or failed write leaves neither the final name nor the temporary file behind, and a file
replaced keeps its permissions. Used for GGUFs, importance matrices, plots and saved conversations alike.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from lcpp_zh.errors import ConversionError, LcppError

# Builds the error for a destination that cannot be written: (path, reason) -> the error raised.
Failure = Callable[[Path, str], LcppError]


def conversion_failure(path: Path, why: str) -> LcppError:
    """The default: `out.gguf: the folder /x does not exist`."""
    return ConversionError(f"{path}: {why}")


def check_writable(destination: Path, fail: Failure = conversion_failure) -> None:
    """Fail early, before any heavy work, when the destination cannot be written."""
    if destination.is_dir():
        raise fail(destination, "is a folder; give a file name")
    parent = destination.parent
    if not parent.is_dir():
        raise fail(destination, f"the folder {parent} does not exist")
    try:  # os.access is not enough: read-only mounts and pseudo filesystems refuse new files even to root
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise fail(destination, f"cannot write in {parent} ({exc.strerror or exc})") from None


@contextlib.contextmanager
def atomic_path(destination: Path, fail: Failure = conversion_failure) -> Iterator[Path]:
    """A temporary path to write (not created yet: llama.cpp and gguf-py open it themselves); renamed to
    `destination` when the block succeeds, removed otherwise."""
    check_writable(destination, fail)
    temporary = destination.with_name(f".{destination.name}.partial-{os.getpid()}")
    try:
        yield temporary
        with open(temporary, "rb+") as f:
            os.fsync(f.fileno())
        with contextlib.suppress(FileNotFoundError):  # keep the permissions of the file replaced
            os.chmod(temporary, destination.stat().st_mode & 0o777)
        os.replace(temporary, destination)
    except OSError as exc:
        _remove(temporary)
        # The error names the file that failed (a checkpoint read inside the block), the destination for
        # the temporary one.
        failed = Path(exc.filename) if exc.filename and Path(exc.filename) != temporary else destination
        raise fail(failed, exc.strerror or str(exc)) from None
    except BaseException:
        _remove(temporary)
        raise


def write_atomic(destination: Path, payload: bytes, fail: Failure = conversion_failure) -> None:
    """Write `payload` to `destination` whole, or leave it as it was."""
    with atomic_path(destination, fail) as temporary:
        temporary.write_bytes(payload)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
