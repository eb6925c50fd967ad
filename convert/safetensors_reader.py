"""Index the tensors of a .safetensors file from its JSON header, without loading any data.

Format: 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then data.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from lcpp_zh.convert.tensor_source import NUMPY_DTYPES, TensorSource
from lcpp_zh.errors import CheckpointError

_MAX_HEADER = 100 * 1024 * 1024


def index_safetensors(path: Path) -> list[TensorSource]:
    """The tensors of one safetensors file, sorted by name (the order llama.cpp's converter writes them in)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path.name}: not a safetensors file (too short)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(_MAX_HEADER, size - 8):
            raise CheckpointError(f"{path.name}: not a safetensors file or truncated (bad header length)")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path.name}: unreadable safetensors header ({exc})") from None
    data_start = 8 + header_len
    sources = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info.get("dtype")
        if dtype not in NUMPY_DTYPES:
            raise CheckpointError(f"{path.name}: tensor {name} has unsupported dtype {dtype}")
        begin, end = info["data_offsets"]
        source = TensorSource(name, dtype, tuple(info["shape"]), str(path), data_start + begin)
        if end - begin != source.nbytes:
            raise CheckpointError(f"{path.name}: tensor {name} has inconsistent size in the header")
        if data_start + end > size:
            raise CheckpointError(f"{path.name}: file is truncated (tensor {name} runs past the end)")
        sources.append(source)
    return sorted(sources, key=lambda s: s.name)
