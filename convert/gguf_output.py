"""Write a planned model as a GGUF file: metadata first, then tensor data streamed a block at a time.

gguf-py's GGUFWriter lays out the header, the key-values and the tensor infos; the data section is
written here block by block (the writer's own tensor path wants whole arrays in memory).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np

from lcpp_zh.convert.tensor_plan import PlannedTensor
from lcpp_zh.errors import CheckpointError

# progress(bytes_done, bytes_total)
Progress = Callable[[int, int], None]


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
    """Copy bytes from a checkpoint file straight into the output, inside the kernel where it can
    (copy_file_range): an unchanged f16/f32 tensor never passes through Python memory."""
    out.flush()
    with open(path, "rb") as source:
        remaining, position = length, offset
        while remaining:
            try:
                copied = os.copy_file_range(source.fileno(), out.fileno(), min(remaining, 1 << 30), position)
            except OSError:
                copied = 0
            if copied == 0:  # not supported across these filesystems, or a short file: plain reads
                source.seek(position)
                chunk = source.read(min(remaining, 16 << 20))
                if not chunk:
                    raise CheckpointError(f"{os.path.basename(path)}: file is truncated")
                os.write(out.fileno(), chunk)
                copied = len(chunk)
            remaining -= copied
            position += copied
    out.seek(0, os.SEEK_END)


def _pad(out, alignment: int) -> None:
    remainder = out.tell() % alignment
    if remainder:
        out.write(bytes(alignment - remainder))
