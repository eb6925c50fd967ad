"""Write a planned model as a GGUF file: metadata first, then tensor data streamed a block at a time.

gguf-py's GGUFWriter lays out the header, the key-values and the tensor infos; the data section is
written here block by block (the writer's own tensor path wants whole arrays in memory).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np

from lcpp_zh.convert.tensor_plan import PlannedTensor

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
            written = 0
            for block in tensor.blocks():
                data = memoryview(np.ascontiguousarray(block)).cast("B")
                out.write(data)
                written += len(data)
                done += len(data)
                if progress is not None:
                    progress(done, total)
            if written != tensor.nbytes:
                raise AssertionError(f"{tensor.name}: wrote {written} bytes, planned {tensor.nbytes}")
            _pad(out, alignment)
        out.flush()
    finally:
        writer.close()


def _pad(out, alignment: int) -> None:
    remainder = out.tell() % alignment
    if remainder:
        out.write(bytes(alignment - remainder))
