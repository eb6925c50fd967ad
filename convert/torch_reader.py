"""Read PyTorch `pytorch_model*.bin` checkpoints without torch and without running any code.

A .bin is a zip holding `data.pkl` (a pickle of the state dict) and one uncompressed entry per storage.
The pickle is read by a restricted unpickler that knows only the globals a state dict needs (tensor
rebuilding, storage types, OrderedDict) and refuses everything else, so a malicious pickle cannot execute.
Tensors come back as `TensorSource`s pointing into the zip's stored bytes; no tensor data is read here.
"""

from __future__ import annotations

import collections
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lcpp_zh.convert.tensor_source import NUMPY_DTYPES, TensorSource
from lcpp_zh.errors import CheckpointError, UnsafeCheckpointError

_STORAGE_DTYPES = {
    "HalfStorage": "F16",
    "FloatStorage": "F32",
    "BFloat16Storage": "BF16",
    "DoubleStorage": "F64",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
}


@dataclass(frozen=True)
class _StorageType:
    dtype: str


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: str
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: _Storage, storage_offset: int, size, stride, *_ignored) -> _TensorRef:
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: _TensorRef, *_ignored) -> _TensorRef:
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of a plain state dict; anything else is refused before it can run."""

    def __init__(self, file, source_name: str, legacy: bool = False):
        super().__init__(file)
        self._source_name = source_name
        self._legacy = legacy

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise UnsafeCheckpointError(
            f"{self._source_name}: the pickle asks for {module}.{name}, which is not part of a tensor "
            "state dict; refusing to load it (checkpoints are never allowed to run code)"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        if self._legacy and isinstance(pid, tuple) and pid and pid[0] == "storage":
            return _Storage(str(pid[2]), "U8", 0)  # only read far enough to vet the pickle
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafeCheckpointError(f"{self._source_name}: unexpected persistent id in the pickle")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError(f"{self._source_name}: unknown storage type in the pickle")
        return _Storage(str(key), storage_type.dtype, int(numel))


def _vet_legacy_pickle(path: Path) -> None:
    """A non-zip .bin is a sequence of raw pickles (magic, version, sys info, state dict): read them with the
    restricted unpickler so that a malicious one is reported as such, never run."""
    with open(path, "rb") as f:
        if f.read(1) != b"\x80":
            raise CheckpointError(f"{path.name}: not a PyTorch checkpoint (neither zip nor pickle; truncated?)")
        f.seek(0)
        for _ in range(4):
            try:
                _RestrictedUnpickler(f, path.name, legacy=True).load()
            except (pickle.UnpicklingError, EOFError, TypeError, ValueError, struct.error):
                break


def _entry_data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Byte offset of a stored (uncompressed) zip entry's data, read from its local file header."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{path.name}: corrupt zip entry {info.filename}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _c_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for dim in reversed(shape):
        strides.append(step)
        step *= dim
    return tuple(reversed(strides))


def index_torch_bin(path: Path) -> list[TensorSource]:
    """The tensors of one PyTorch zip checkpoint, in the state dict's order."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        _vet_legacy_pickle(path)
        raise CheckpointError(
            f"{path.name}: PyTorch's legacy (pre-1.6) format is not supported; re-save it with a current "
            "torch, or as safetensors"
        ) from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise CheckpointError(f"{path.name}: no single data.pkl inside; not a PyTorch checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        with archive.open(pickles[0]) as f:
            try:
                state = _RestrictedUnpickler(f, path.name).load()
            except (pickle.UnpicklingError, EOFError, TypeError, ValueError, struct.error) as exc:
                raise CheckpointError(f"{path.name}: unreadable pickle ({exc})") from None
        if not isinstance(state, dict):
            raise CheckpointError(f"{path.name}: the pickle is not a state dict")
        infos = {info.filename: info for info in archive.infolist()}
        return [_to_source(path, prefix, infos, name, ref) for name, ref in state.items()
                if isinstance(ref, _TensorRef)]


def _to_source(path: Path, prefix: str, infos: dict, name: str, ref: _TensorRef) -> TensorSource:
    info = infos.get(f"{prefix}data/{ref.storage.key}")
    if info is None:
        raise CheckpointError(f"{path.name}: storage {ref.storage.key} of tensor {name} is missing")
    if info.compress_type != zipfile.ZIP_STORED:
        raise CheckpointError(f"{path.name}: compressed storages are not supported (tensor {name})")
    itemsize = NUMPY_DTYPES[ref.storage.dtype].itemsize
    if info.file_size != ref.storage.numel * itemsize:
        raise CheckpointError(f"{path.name}: storage of tensor {name} has the wrong size")
    numel = 1
    for dim in ref.shape:
        numel *= dim
    if numel > 1 and ref.stride != _c_strides(ref.shape):
        raise CheckpointError(f"{path.name}: tensor {name} is not contiguous; re-save the checkpoint")
    if ref.offset + numel > ref.storage.numel:
        raise CheckpointError(f"{path.name}: tensor {name} lies outside its storage")
    offset = _entry_data_offset(path, info) + ref.offset * itemsize
    return TensorSource(name, ref.storage.dtype, ref.shape, str(path), offset)
