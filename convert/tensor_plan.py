"""Plan and produce the GGUF tensors of a Llama checkpoint: names, types, Q/K permutation, data in blocks.

Every decision matches llama.cpp's converter: HF names map through gguf-py's tensor map, 1-D tensors and
norms stay F32, the rest take the output type (Q8_0 falls back to F16 for rows not divisible by its block),
and data goes through gguf-py's own quantizers on the same numpy input, so the bytes are identical.
Data is produced a block of rows at a time, which keeps memory flat whatever the model size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import gguf
import numpy as np

from lcpp_zh.convert.hparams import rope_parameters
from lcpp_zh.convert.rope import llama3_rope_factors
from lcpp_zh.convert.tensor_source import ArraySource, TensorSource
from lcpp_zh.errors import CheckpointError

# Tensors llama.cpp does not need.
_SKIPPED_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")
# Rows per block aim at this many input bytes: small enough to keep memory flat, big enough to be fast.
_BLOCK_BYTES = 8 * 1024 * 1024

OUTTYPES: dict[str, gguf.LlamaFileType] = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
FILE_TYPE_TENSOR_TYPE = {
    gguf.LlamaFileType.ALL_F32: gguf.GGMLQuantizationType.F32,
    gguf.LlamaFileType.MOSTLY_F16: gguf.GGMLQuantizationType.F16,
    gguf.LlamaFileType.MOSTLY_BF16: gguf.GGMLQuantizationType.BF16,
    gguf.LlamaFileType.MOSTLY_Q8_0: gguf.GGMLQuantizationType.Q8_0,
}

# A row transform: receives (first_row, block of rows as float) and returns the block to quantize.
RowTransform = Callable[[int, np.ndarray], np.ndarray]


@dataclass
class PlannedTensor:
    """One GGUF tensor: where its data comes from and how it is turned into bytes."""

    name: str
    source: TensorSource
    shape: tuple[int, ...]
    qtype: gguf.GGMLQuantizationType
    permute_heads: int | None = None  # rotate-half -> interleaved RoPE layout, with this many heads
    transform: RowTransform | None = None  # e.g. a LoRA merge, applied before permutation

    @property
    def nbytes(self) -> int:
        block_size, type_size = gguf.GGML_QUANT_SIZES[self.qtype]
        return math.prod(self.shape) // block_size * type_size

    def blocks(self) -> Iterator[bytes | np.ndarray]:
        """The tensor's GGUF bytes, a block of rows at a time."""
        rows = self.source.n_rows  # a 1-D tensor is a single row
        rows_per_block = self._rows_per_block(rows)
        for start in range(0, rows, rows_per_block):
            stop = min(rows, start + rows_per_block)
            if self._is_plain_copy():
                yield self.source.read_raw(start, stop)
                continue
            data = self.source.read_float(start, stop)
            if self.transform is not None:
                data = self.transform(start, data)
            if self.permute_heads is not None:
                data = permute_rows(data, self.shape[0] // self.permute_heads)
            yield gguf.quants.quantize(data, self.qtype)

    def copy_range(self) -> tuple[str, int, int] | None:
        """(file, offset, length) when the GGUF bytes are the checkpoint bytes unchanged, for a kernel-side copy."""
        if not self.source.path or not self._is_plain_copy():
            return None
        return self.source.path, self.source.offset, self.nbytes

    def _is_plain_copy(self) -> bool:
        same = {("F16", gguf.GGMLQuantizationType.F16), ("F32", gguf.GGMLQuantizationType.F32)}
        return (self.source.dtype, self.qtype) in same and self.permute_heads is None and self.transform is None

    def _rows_per_block(self, rows: int) -> int:
        row_bytes = max(1, self.source.nbytes // max(rows, 1))
        per_block = max(1, _BLOCK_BYTES // row_bytes)
        if self.permute_heads is not None and len(self.shape) > 1:
            head_rows = self.shape[0] // self.permute_heads
            per_block = max(head_rows, per_block // head_rows * head_rows)
        return min(rows, per_block)


def permute_rows(block: np.ndarray, head_dim: int) -> np.ndarray:
    """Hugging Face stores Q and K for rotate-half RoPE (first half, second half of each head); ggml rotates
    adjacent pairs, so each head's rows are interleaved: (heads, 2, head_dim/2, cols) -> (heads, head_dim/2, 2, cols).
    The block holds whole heads (a 1-D bias is one block)."""
    heads = block.shape[0] // head_dim
    return block.reshape(heads, 2, head_dim // 2, *block.shape[1:]).swapaxes(1, 2).reshape(block.shape)


def tensor_type(name: str, n_dims: int, row_length: int, file_type: gguf.LlamaFileType) -> gguf.GGMLQuantizationType:
    """The GGUF type llama.cpp's converter gives a tensor for an output file type."""
    if n_dims <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return gguf.GGMLQuantizationType.F32
    qtype = FILE_TYPE_TENSOR_TYPE[file_type]
    block_size = gguf.GGML_QUANT_SIZES[qtype][0]
    if row_length % block_size != 0:
        return gguf.GGMLQuantizationType.F16  # the converter's QuantError fallback
    return qtype


def guess_file_type(tensors: list[TensorSource]) -> gguf.LlamaFileType:
    """`auto`: the first 2-D bf16 or f16 tensor decides; all-f32 checkpoints become F16."""
    for source in tensors:
        if len(source.shape) < 2:
            continue
        if source.dtype == "BF16":
            return gguf.LlamaFileType.MOSTLY_BF16
        if source.dtype == "F16":
            return gguf.LlamaFileType.MOSTLY_F16
    return gguf.LlamaFileType.MOSTLY_F16


def _extra_tensors(config: dict) -> list[PlannedTensor]:
    """Tensors the converter computes: Llama 3.1 rope factors, written first as the reference does."""
    params = rope_parameters(config)
    if str(params.get("rope_type", "")).lower() != "llama3":
        return []
    factors = llama3_rope_factors(params, config["head_dim"])
    name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
    return [PlannedTensor(name, ArraySource(name, factors), factors.shape, gguf.GGMLQuantizationType.F32)]


def plan_tensors(tensors: list[TensorSource], config: dict, file_type: gguf.LlamaFileType) -> list[PlannedTensor]:
    """Map the checkpoint's tensors to GGUF tensors, in checkpoint order."""
    n_layers = config["num_hidden_layers"]
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    bare_model = config["architectures"][0] == "LlamaModel"
    planned = _extra_tensors(config)
    for source in tensors:
        hf_name = source.name.replace("language_model.", "")
        if bare_model:
            hf_name = "model." + hf_name
        if hf_name.endswith(_SKIPPED_SUFFIXES):
            continue
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise CheckpointError(f"tensor {source.name} has no place in a llama GGUF (unexpected name)")
        permute = None
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            permute = config["num_attention_heads"]
        elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            permute = config["num_key_value_heads"]
        row_length = source.shape[-1] if source.shape else 1
        qtype = tensor_type(gguf_name, len(source.shape), row_length, file_type)
        planned.append(PlannedTensor(gguf_name, source, source.shape, qtype, permute))
    return planned
