"""ctypes view of ggml's `struct ggml_tensor` and the few libggml-base calls an eval callback needs.

The layout and constants follow ggml/include/ggml.h of the llama.cpp that llama-cpp-python 0.3.36 vendors;
`check_layout` compares them with the loaded library once (struct size, op names) so a different build fails
loudly instead of reading garbage. The library is loaded by lcpp_zh.runtime.ggml_api. Nothing here computes
anything.
"""

from __future__ import annotations

import ctypes
import functools
import logging

import numpy as np

from lcpp_zh.common.versions import llama_cpp_python_pin
from lcpp_zh.errors import EngineError

logger = logging.getLogger(__name__)

# ggml.h: GGML_MAX_DIMS 4, GGML_MAX_SRC 10, GGML_MAX_OP_PARAMS 64, GGML_MAX_NAME 64 (no build overrides it).
GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_OP_PARAMS = 64
GGML_MAX_NAME = 64
# enum ggml_op in ggml.h: GGML_OP_NONE = 0, ... GGML_OP_L2_NORM (28), GGML_OP_MUL_MAT, GGML_OP_MUL_MAT_ID.
GGML_OP_MUL_MAT = 29
GGML_OP_MUL_MAT_ID = 30
GGML_TYPE_F32 = 0
GGML_TYPE_I32 = 26
# sizeof(struct ggml_object) in ggml.c (offs, size, next, type, padding[4]): ggml_tensor_overhead() adds it.
_GGML_OBJECT_SIZE = 32


class GgmlTensor(ctypes.Structure):
    """struct ggml_tensor (ggml.h), field for field."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


@functools.cache
def ggml_base() -> ctypes.CDLL:
    """libggml-base as lcpp_zh.runtime.ggml_api loads it, with the layout above checked against it once."""
    from lcpp_zh.runtime.ggml_api import ggml_base as load

    lib = load()
    check_layout(lib)
    return lib


def check_layout(lib: ctypes.CDLL) -> None:
    """The struct size and the op numbers as the loaded ggml sees them; an EngineError when they differ."""
    size = lib.ggml_tensor_overhead() - _GGML_OBJECT_SIZE
    ops = lib.ggml_op_name(GGML_OP_MUL_MAT), lib.ggml_op_name(GGML_OP_MUL_MAT_ID)
    if size != ctypes.sizeof(GgmlTensor) or ops != (b"MUL_MAT", b"MUL_MAT_ID"):
        raise EngineError(f"this llama.cpp build's ggml_tensor ({size} bytes, ops {ops}) differs from the one "
                          f"lcpp-zh was written for ({ctypes.sizeof(GgmlTensor)} bytes); reinstall llama-cpp-python "
                          f"{llama_cpp_python_pin()}")


def tensor_at(address: int) -> GgmlTensor:
    return GgmlTensor.from_address(address)


def weight_name(tensor: GgmlTensor) -> str:
    """The weight's name without the scheduler's decorations: `CUDA0#blk.0.attn_k.weight#0` ->
    `blk.0.attn_k.weight` (llama-imatrix's filter_tensor_name)."""
    name = tensor.name.decode("utf-8", errors="replace")
    if "#" in name:
        name = name.split("#", 2)[1]
    return name


def n_rows(tensor: GgmlTensor) -> int:
    return tensor.ne[1] * tensor.ne[2] * tensor.ne[3]


def tensor_array(lib: ctypes.CDLL, address: int, tensor: GgmlTensor, dtype: type, scratch: dict,
                 slot: str = "src1") -> np.ndarray:
    """The tensor's elements as an (ne3, ne2, ne1, ne0) array: a strided view of host memory when its buffer
    is in host memory, else a copy fetched with ggml_backend_tensor_get into `scratch[slot]` (valid until the
    next fetch into that slot)."""
    shape = tuple(reversed(tensor.ne[:GGML_MAX_DIMS]))
    strides = tuple(reversed(tensor.nb[:GGML_MAX_DIMS]))
    nbytes = lib.ggml_nbytes(address)
    if tensor.buffer and lib.ggml_backend_buffer_is_host(tensor.buffer):
        raw = (ctypes.c_char * nbytes).from_address(tensor.data)
    else:
        buf = scratch.get(slot)
        if buf is None or len(buf) < nbytes:
            buf = scratch[slot] = np.empty(max(nbytes, 1 << 20), dtype=np.uint8)
        lib.ggml_backend_tensor_get(address, buf.ctypes.data, 0, nbytes)
        raw = buf
    return np.ndarray(shape, dtype=dtype, buffer=raw, strides=strides)
