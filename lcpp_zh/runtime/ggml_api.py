"""ctypes bindings to ggml's backend device API (libggml), the tensor calls an eval callback needs
(libggml-base) and its RPC backend (libggml-rpc), loaded by one loader from the folder llama-cpp-python loads
libllama from, so that they are the very libraries llama.cpp runs on.

Signatures follow ggml/include/ggml-backend.h and ggml-rpc.h of the vendored llama.cpp (RPC protocol 7.0.0).
Only bindings here: enumeration lives in lcpp_zh.runtime.devices, workers in lcpp_zh.runtime.rpc.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys
from pathlib import Path

from lcpp_zh.errors import LcppError, RpcUnavailable

logger = logging.getLogger(__name__)

# ggml-rpc.h: RPC_PROTO_{MAJOR,MINOR,PATCH}_VERSION of the llama.cpp llama-cpp-python 0.3.36 vendors. A worker
# answers HELLO with its own; llama.cpp accepts the same major and a minor no newer than its own.
RPC_PROTO_VERSION = (7, 0, 0)
RPC_MAX_SERVERS = 16  # GGML_RPC_MAX_SERVERS

# enum ggml_backend_dev_type
DEV_TYPE_NAMES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}

dev_t = ctypes.c_void_p  # ggml_backend_dev_t
reg_t = ctypes.c_void_p  # ggml_backend_reg_t


def lib_dir() -> Path:
    """The folder llama-cpp-python loaded libllama from ($LLAMA_CPP_LIB_PATH or llama_cpp/lib)."""
    from llama_cpp import llama_cpp as binding

    return Path(binding._base_path)


def _lib_names(base: str) -> list[str]:
    if sys.platform == "win32":
        return [f"{base}.dll", f"lib{base}.dll"]
    if sys.platform == "darwin":
        return [f"lib{base}.dylib", f"lib{base}.so"]
    return [f"lib{base}.so"]


def _load(base: str) -> ctypes.CDLL | None:
    import llama_cpp  # noqa: F401 - libllama first, so that its libggml is the one found already loaded

    folder = lib_dir()
    for name in _lib_names(base):
        path = folder / name
        if path.exists():
            return ctypes.CDLL(str(path))
    return None


def _declare(lib: ctypes.CDLL, name: str, restype: object, argtypes: list) -> None:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = argtypes


@functools.cache
def ggml() -> ctypes.CDLL:
    """libggml with the device registry functions declared."""
    lib = _load("ggml")
    if lib is None:
        raise LcppError(f"libggml not found in {lib_dir()}: reinstall llama-cpp-python with `make install`")
    size_p = ctypes.POINTER(ctypes.c_size_t)
    for name, restype, argtypes in [
        ("ggml_backend_dev_count", ctypes.c_size_t, []),
        ("ggml_backend_dev_get", dev_t, [ctypes.c_size_t]),
        ("ggml_backend_dev_by_name", dev_t, [ctypes.c_char_p]),
        ("ggml_backend_dev_name", ctypes.c_char_p, [dev_t]),
        ("ggml_backend_dev_description", ctypes.c_char_p, [dev_t]),
        ("ggml_backend_dev_memory", None, [dev_t, size_p, size_p]),
        ("ggml_backend_dev_type", ctypes.c_int, [dev_t]),
        ("ggml_backend_dev_backend_reg", reg_t, [dev_t]),
        ("ggml_backend_reg_name", ctypes.c_char_p, [reg_t]),
        ("ggml_backend_reg_count", ctypes.c_size_t, []),
        ("ggml_backend_reg_get", reg_t, [ctypes.c_size_t]),
        ("ggml_backend_reg_by_name", reg_t, [ctypes.c_char_p]),
        ("ggml_backend_register", None, [reg_t]),
        ("ggml_backend_load_all", None, []),
    ]:
        _declare(lib, name, restype, argtypes)
    return lib


@functools.cache
def ggml_base() -> ctypes.CDLL:
    """libggml-base with the tensor and buffer calls that read activations declared (the importance matrix's
    eval callback; the struct layout is lcpp_zh.eval.quantization.ggml_tensor's)."""
    lib = _load("ggml-base")
    if lib is None:
        raise LcppError(f"libggml-base not found in {lib_dir()}: reinstall llama-cpp-python with `make install`")
    for name, restype, argtypes in [
        ("ggml_backend_buffer_is_host", ctypes.c_bool, [ctypes.c_void_p]),
        ("ggml_backend_tensor_get", None, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]),
        ("ggml_nbytes", ctypes.c_size_t, [ctypes.c_void_p]),
        ("ggml_op_name", ctypes.c_char_p, [ctypes.c_int]),
        ("ggml_tensor_overhead", ctypes.c_size_t, []),
    ]:
        _declare(lib, name, restype, argtypes)
    return lib


@functools.cache
def ggml_rpc() -> ctypes.CDLL:
    """libggml-rpc with the client and server functions declared; RpcUnavailable without it."""
    lib = _load("ggml-rpc")
    if lib is None:
        raise RpcUnavailable("this llama-cpp-python is built without RPC support (no libggml-rpc): reinstall it "
                             "with `make install`")
    _declare(lib, "ggml_backend_rpc_add_server", reg_t, [ctypes.c_char_p])
    _declare(lib, "ggml_backend_rpc_get_device_memory", None,
             [ctypes.c_char_p, ctypes.c_uint32, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)])
    _declare(lib, "ggml_backend_rpc_start_server", None,
             [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(dev_t)])
    return lib


def ensure_backends() -> None:
    """The backends registered, as llama.cpp does before it first lists devices (a no-op when static)."""
    lib = ggml()
    if not lib.ggml_backend_reg_count():
        lib.ggml_backend_load_all()


def dev_memory(dev: int) -> tuple[int, int]:
    """(free, total) bytes of a device."""
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    ggml().ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
    return int(free.value), int(total.value)


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", errors="replace") if raw else ""


def dev_name(dev: int) -> str:
    return _text(ggml().ggml_backend_dev_name(dev))


def dev_description(dev: int) -> str:
    return _text(ggml().ggml_backend_dev_description(dev))


def dev_reg_name(dev: int) -> str:
    lib = ggml()
    return _text(lib.ggml_backend_reg_name(lib.ggml_backend_dev_backend_reg(dev)))


def backend_names() -> list[str]:
    """The registered backends (CPU, CUDA, Metal, Vulkan, ROCm, SYCL, RPC, BLAS, ...), devices or not."""
    ensure_backends()
    lib = ggml()
    return [_text(lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i))) for i in range(lib.ggml_backend_reg_count())]


def device_array(handles: list[int]) -> ctypes.Array:
    """A NULL-terminated ggml_backend_dev_t array (llama_model_params.devices); keep it alive with the params."""
    return (dev_t * (len(handles) + 1))(*handles, None)


__all__ = ["RPC_PROTO_VERSION", "RPC_MAX_SERVERS", "DEV_TYPE_NAMES", "RpcUnavailable", "lib_dir", "ggml", "ggml_base",
           "ggml_rpc", "ensure_backends", "dev_memory", "dev_name", "dev_description", "dev_reg_name", "backend_names",
           "device_array"]
