"""A tensor in a checkpoint file, read on demand, a block of rows at a time.

Readers (safetensors, PyTorch .bin) describe each tensor as a `TensorSource`; nothing is loaded until
`read_rows` is called, so converting never holds more than one block of one tensor in memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from lcpp_zh.errors import CheckpointError

# Checkpoint dtypes by their safetensors name; bf16 has no numpy type and is read as uint16 bits.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}


@dataclass(frozen=True)
class TensorSource:
    """Where one tensor's bytes are: a file, a byte offset and a C-contiguous (dtype, shape)."""

    name: str
    dtype: str  # safetensors dtype name: F32, F16, BF16, ...
    shape: tuple[int, ...]
    path: str
    offset: int

    @property
    def n_rows(self) -> int:
        """Rows of a 2-D (or higher) tensor; a 1-D tensor or scalar is one row."""
        return self.shape[0] if len(self.shape) > 1 else 1

    @property
    def row_elements(self) -> int:
        return int(np.prod(self.shape[1:] if len(self.shape) > 1 else self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * NUMPY_DTYPES[self.dtype].itemsize

    def read_raw(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) in the stored dtype (bf16 as uint16 bits), shape (stop-start, *shape[1:])."""
        np_dtype = NUMPY_DTYPES[self.dtype]
        count = (stop - start) * self.row_elements
        shape = (stop - start, *self.shape[1:]) if len(self.shape) > 1 else self.shape
        byte_start = self.offset + start * self.row_elements * np_dtype.itemsize
        n_bytes = count * np_dtype.itemsize
        buffer = bytearray(n_bytes)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(byte_start)
            got = f.readinto(buffer)
        if got != n_bytes:
            raise CheckpointError(
                f"{os.path.basename(self.path)}: tensor {self.name} is cut short (file truncated?)"
            )
        return np.frombuffer(buffer, dtype=np_dtype).reshape(shape)

    def read_float(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as numpy floats, matching what llama.cpp's converter gets from torch:
        f16 and f32 stay as they are, every other dtype becomes float32 (bf16 exactly, by widening its bits)."""
        raw = self.read_raw(start, stop)
        if self.dtype == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        if self.dtype in ("F16", "F32"):
            return raw
        return raw.astype(np.float32)

    def read_all(self) -> np.ndarray:
        return self.read_float(0, self.n_rows)


class ArraySource(TensorSource):
    """A tensor computed by the converter itself (e.g. Llama 3's rope factors), held in memory."""

    def __init__(self, name: str, array: np.ndarray):
        super().__init__(name, "F32", tuple(array.shape), "", 0)
        object.__setattr__(self, "_array", np.ascontiguousarray(array, dtype=np.float32))

    def read_raw(self, start: int, stop: int) -> np.ndarray:
        array = self._array  # type: ignore[attr-defined]
        return array[start:stop] if array.ndim > 1 else array
