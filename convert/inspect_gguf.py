"""Summarise a GGUF file: architecture, sizes, context, vocabulary, chat template, sampling defaults, tensors.

Reads only the header through gguf-py's GGUFReader (memory-mapped; tensor data is not touched).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import gguf

from lcpp_zh.errors import ModelError


def read_gguf(path: Path) -> gguf.GGUFReader:
    if not Path(path).is_file():
        raise ModelError(f"{path}: no such file")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, OSError, IndexError) as exc:
        raise ModelError(f"{path}: not a readable GGUF file ({exc})") from None


def field_value(reader: gguf.GGUFReader, key: str) -> Any:
    """A scalar or string key's value, or None."""
    field = reader.get_field(key)
    if field is None:
        return None
    return field.contents()


def sampling_settings(reader: gguf.GGUFReader) -> dict[str, Any]:
    """The general.sampling.* defaults, short names (top_k, temp, ...) to values; float32s shown as written
    (0.95, not 0.949999988)."""
    prefix = "general.sampling."
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith(prefix):
            value = field.contents()
            out[key[len(prefix):]] = round(value, 6) if isinstance(value, float) else value
    return out


def summarize_gguf(path: Path) -> dict[str, Any]:
    """The facts `lcpp-zh inspect` shows, as a JSON-ready dict."""
    reader = read_gguf(path)
    arch = field_value(reader, "general.architecture") or "unknown"
    types = Counter(t.tensor_type.name for t in reader.tensors)
    params = sum(int(t.n_elements) for t in reader.tensors)
    tokens = reader.get_field("tokenizer.ggml.tokens")
    file_type = field_value(reader, "general.file_type")
    return {
        "path": str(path),
        "size_bytes": os.path.getsize(path),
        "name": field_value(reader, "general.name"),
        "architecture": arch,
        "file_type": gguf.LlamaFileType(file_type).name if file_type is not None else None,
        "parameters": params,
        "layers": field_value(reader, f"{arch}.block_count"),
        "embedding_length": field_value(reader, f"{arch}.embedding_length"),
        "heads": field_value(reader, f"{arch}.attention.head_count"),
        "kv_heads": field_value(reader, f"{arch}.attention.head_count_kv"),
        "context_length": field_value(reader, f"{arch}.context_length"),
        "rope_freq_base": field_value(reader, f"{arch}.rope.freq_base"),
        "tokenizer": field_value(reader, "tokenizer.ggml.model"),
        "vocab_size": len(tokens.data) if tokens is not None else None,
        "bos_token_id": field_value(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": field_value(reader, "tokenizer.ggml.eos_token_id"),
        "chat_template": field_value(reader, "tokenizer.chat_template"),
        "sampling": sampling_settings(reader),
        "tensor_types": dict(types.most_common()),
        "tensors": len(reader.tensors),
    }
