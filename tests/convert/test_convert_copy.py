"""Unchanged tensors are copied by copy_file_range where Linux has it, and through a bounded buffer where it
is missing (macOS, Windows) or refused (EXDEV across filesystems, ENOSYS, EINVAL, EOPNOTSUPP): every way
gives the same GGUF, byte for byte, and the buffered one still matches llama.cpp's converter.
"""

from __future__ import annotations

import errno
import os

import pytest

from fixtures.gguf_compare import compare_gguf, format_diffs
from lcpp_zh.convert import gguf_output
from lcpp_zh.convert.pipeline import convert_checkpoint
from lcpp_zh.errors import CheckpointError, ConversionError

HAS_KERNEL_COPY = hasattr(os, "copy_file_range")


@pytest.fixture(scope="module")
def f16_checkpoint(tiny_llama):
    # float16 weights converted to f16: all but q/k (permuted) are plain copies, the norms (f32) too.
    return tiny_llama(dtype="float16")


@pytest.fixture(scope="module")
def kernel_copied(f16_checkpoint, tmp_path_factory):
    """The conversion as it runs on this platform, counting copy_file_range calls that copied something."""
    calls = []
    real = getattr(os, "copy_file_range", None)

    def spy(*args):
        copied = real(*args)
        calls.append(copied)
        return copied

    with pytest.MonkeyPatch.context() as mp:
        if real is not None:
            mp.setattr(os, "copy_file_range", spy)
        out = convert_checkpoint(f16_checkpoint, tmp_path_factory.mktemp("kernel") / "m.gguf", outtype="f16")
    return out, calls


def _convert(checkpoint, path, monkeypatch, copy_file_range=None, remove=False):
    with monkeypatch.context() as mp:
        if remove:
            mp.delattr(os, "copy_file_range", raising=False)
        elif copy_file_range is not None:
            mp.setattr(os, "copy_file_range", copy_file_range, raising=False)
        return convert_checkpoint(checkpoint, path, outtype="f16")


def test_kernel_copy_used_where_available(kernel_copied):
    _, calls = kernel_copied
    if not HAS_KERNEL_COPY:
        pytest.skip("no os.copy_file_range on this platform")
    assert calls and all(c > 0 for c in calls)


def test_without_copy_file_range_same_bytes(f16_checkpoint, kernel_copied, monkeypatch, tmp_path,
                                            reference_gguf):
    """macOS and Windows: the attribute does not exist."""
    ours = _convert(f16_checkpoint, tmp_path / "m.gguf", monkeypatch, remove=True)
    assert ours.read_bytes() == kernel_copied[0].read_bytes()
    diffs = compare_gguf(ours, reference_gguf(f16_checkpoint, "f16"))
    assert not diffs, format_diffs(diffs)


@pytest.mark.parametrize("code", [errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP],
                         ids=["EXDEV", "ENOSYS", "EINVAL", "EOPNOTSUPP"])
def test_refused_copy_same_bytes(code, f16_checkpoint, kernel_copied, monkeypatch, tmp_path):
    calls = []

    def refuse(*args):
        calls.append(args)
        raise OSError(code, os.strerror(code))

    ours = _convert(f16_checkpoint, tmp_path / "m.gguf", monkeypatch, refuse)
    assert calls, "the converter never tried copy_file_range"
    assert ours.read_bytes() == kernel_copied[0].read_bytes()


@pytest.mark.skipif(not HAS_KERNEL_COPY, reason="no os.copy_file_range on this platform")
def test_copy_refused_midway_same_bytes(f16_checkpoint, kernel_copied, monkeypatch, tmp_path):
    """A few odd-sized kernel copies, then EXDEV: the buffered copy resumes at the right offset."""
    real = os.copy_file_range
    budget = [3]

    def stutter(src, dst, count, offset_src=None, offset_dst=None):
        if budget[0] == 0:
            budget[0] = 3
            raise OSError(errno.EXDEV, "cross-device")
        budget[0] -= 1
        return real(src, dst, min(count, 77), offset_src, offset_dst)

    ours = _convert(f16_checkpoint, tmp_path / "m.gguf", monkeypatch, stutter)
    assert ours.read_bytes() == kernel_copied[0].read_bytes()


def test_other_errors_are_raised_and_leave_nothing(f16_checkpoint, monkeypatch, tmp_path):
    """Disk full is not a reason to try another way: it surfaces as the user's error, no partial GGUF left."""

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(ConversionError, match=os.strerror(errno.ENOSPC)):
        _convert(f16_checkpoint, tmp_path / "m.gguf", monkeypatch, full)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("remove", [False, True], ids=["kernel", "buffered"])
def test_truncated_source(remove, monkeypatch, tmp_path):
    source = tmp_path / "weights.bin"
    source.write_bytes(bytes(range(256)) * 4)
    with monkeypatch.context() as mp:
        if remove:
            mp.delattr(os, "copy_file_range", raising=False)
        with open(tmp_path / "out", "w+b") as out:
            gguf_output._copy_span(out, str(source), 1000, 24)  # exactly to the end: fine
            with pytest.raises(CheckpointError, match="weights.bin: file is truncated"):
                gguf_output._copy_span(out, str(source), 1000, 25)
    assert (tmp_path / "out").read_bytes()[:24] == (bytes(range(256)) * 4)[1000:]


def test_buffered_copy_in_chunks(monkeypatch, tmp_path):
    """A span of many chunks lands after what the output already holds, in order."""
    monkeypatch.setattr(gguf_output, "_COPY_CHUNK", 1000)
    monkeypatch.delattr(os, "copy_file_range", raising=False)
    data = os.urandom(10_500)
    (tmp_path / "src").write_bytes(data)
    with open(tmp_path / "out", "w+b") as out:
        out.write(b"head")
        gguf_output._copy_span(out, str(tmp_path / "src"), 500, 9_999)
        assert out.tell() == 4 + 9_999
    assert (tmp_path / "out").read_bytes() == b"head" + data[500:10_499]
