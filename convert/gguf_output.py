"""Write a planned model as a GGUF file: metadata first, then tensor data streamed a block at a time.

gguf-py's GGUFWriter lays out the header, the key-values and the tensor infos; the data section is
written here block by block (the writer's own tensor path wants whole arrays in memory).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np

from lcpp_zh.convert.tensor_plan import PlannedTensor
from lcpp_zh.errors import CheckpointError

# progress(bytes_done, bytes_total)
Progress = Callable[[int, int], None]
# copy_file_range's answers for "not for these files": another filesystem (before Linux 5.3), a kernel or
# filesystem without it. The buffered copy takes over; any other error (disk full, I/O) is raised.
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP})
# The buffered copy's memory, whatever the tensor's size.
_COPY_CHUNK = 16 << 20


def register_tensors(writer: gguf.GGUFWriter, tensors: list[PlannedTensor]) -> None:
    """Tensor infos, so that the writer can count parameters and lay out offsets before any data exists."""
    for tensor in tensors:
        # A non-uint8 dtype with raw_dtype makes the writer keep the logical shape as given.
        writer.add_tensor_info(tensor.name, tensor.shape, np.dtype(np.float32), tensor.nbytes, raw_dtype=tensor.qtype)


def write_gguf(writer: gguf.GGUFWriter, tensors: list[PlannedTensor], path: Path, progress: Progress | None) -> None:
    """Header, key-values and tensor infos through the writer, then each tensor's blocks in order."""
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    out = writer.fout[0]
    alignment = writer.data_alignment
    total, done = sum(t.nbytes for t in tensors), 0
    try:
        for tensor in tensors:
            _pad(out, alignment)
            span = tensor.copy_range()
            if span is not None:
                _copy_span(out, *span)
                done += tensor.nbytes
            else:
                written = 0
                for block in tensor.blocks():
                    data = memoryview(np.ascontiguousarray(block)).cast("B")
                    out.write(data)
                    written += len(data)
                if written != tensor.nbytes:
                    raise AssertionError(f"{tensor.name}: wrote {written} bytes, planned {tensor.nbytes}")
                done += written
            if progress is not None:
                progress(done, total)
            _pad(out, alignment)
        out.flush()
    finally:
        writer.close()


def _copy_span(out, path: str, offset: int, length: int) -> None:
    """Copy bytes from a checkpoint file straight into the output: inside the kernel where it can
    (copy_file_range, Linux), so an unchanged f16/f32 tensor never passes through Python memory; elsewhere
    (macOS, Windows, across filesystems) through one bounded buffer."""
    out.flush()
    with open(path, "rb") as source:
        done = _kernel_copy(source.fileno(), out.fileno(), offset, length)
        if done < length:
            _buffered_copy(source, out.fileno(), offset + done, length - done, path)
    out.seek(0, os.SEEK_END)


def _kernel_copy(src: int, dst: int, offset: int, length: int) -> int:
    """Bytes copied by copy_file_range (0 where the platform has none); stops early, leaving the rest to the
    buffered copy, when the kernel refuses this pair of files or the source ends short."""
    copy_file_range = getattr(os, "copy_file_range", None)
    done = 0
    while copy_file_range is not None and done < length:
        try:
            copied = copy_file_range(src, dst, min(length - done, 1 << 30), offset + done)
        except OSError as exc:
            if exc.errno in _NO_KERNEL_COPY:
                return done
            raise
        if copied == 0:
            return done
        done += copied
    return done


def _buffered_copy(source, dst: int, offset: int, length: int, path: str) -> None:
    buffer = bytearray(min(length, _COPY_CHUNK))
    view = memoryview(buffer)
    source.seek(offset)
    while length:
        got = source.readinto(view[:min(length, len(buffer))])
        if not got:
            raise CheckpointError(f"{os.path.basename(path)}: file is truncated")
        written = 0
        while written < got:  # os.write may write less than asked (signals, pipes)
            written += os.write(dst, view[written:got])
        length -= got


def _pad(out, alignment: int) -> None:
    remainder = out.tell() % alignment
    if remainder:
        out.write(bytes(alignment - remainder))
