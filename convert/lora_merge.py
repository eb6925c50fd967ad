"""Merge PEFT LoRA adapters into a base checkpoint while it streams to GGUF, one row block at a time.

Each adapted weight gets a row transform W + scale * s * B @ A (s = alpha/r, or alpha/sqrt(r) with rsLoRA)
computed in float32 before the Q/K permutation, so no whole model is ever held in memory. Full weights an
adapter saves (modules_to_save, resized embeddings) replace the base's, with the adapter's tokenizer.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lcpp_zh.convert.checkpoint import Checkpoint
from lcpp_zh.convert.lora import (
    EMBED_NAME,
    LM_HEAD_NAME,
    AdapterError,
    LoraAdapter,
    LoraPair,
    check_against_base,
    read_adapter,
)
from lcpp_zh.convert.tensor_plan import PlannedTensor, RowTransform
from lcpp_zh.convert.tensor_source import TensorSource

logger = logging.getLogger(__name__)


@dataclass
class LoraMerge:
    """The base checkpoint as the adapters change it, and the row transforms that add their deltas."""

    checkpoint: Checkpoint  # replaced tensors and vocab_size; same folder, names and order as the base
    tokenizer_dir: Path
    transforms: dict[str, RowTransform]  # by the checkpoint's tensor name

    def attach(self, planned: list[PlannedTensor]) -> None:
        """Hook the merge into planned tensors (which then can no longer be copied byte for byte)."""
        for tensor in planned:
            transform = self.transforms.get(tensor.source.name)
            if transform is not None:
                tensor.transform = transform


def normalized_name(name: str, config: dict) -> str:
    """A checkpoint tensor's name as PEFT sees the module (the same normalisation as tensor planning)."""
    name = name.replace("language_model.", "")
    return "model." + name if config["architectures"][0] == "LlamaModel" else name


def delta_rows(pair: LoraPair, factor: float, start: int, stop: int) -> np.ndarray:
    """factor * (B @ A)[start:stop] in float32; for an embedding PEFT's delta is (B @ A).T."""
    if pair.embedding:
        a = pair.a.read_all().astype(np.float32)[:, start:stop]  # (r, rows)
        b = pair.b.read_all().astype(np.float32)  # (dim, r)
        return (a.T @ b.T) * np.float32(factor)  # (rows, dim)
    a = pair.a.read_all().astype(np.float32)  # (r, in)
    b = pair.b.read_float(start, stop).astype(np.float32)  # (rows, r)
    return (b @ a) * np.float32(factor)


def merge_transform(deltas: list[tuple[LoraPair, float]]) -> RowTransform:
    """The row transform adding every (pair, factor) delta to a block of the weight's rows."""

    def transform(first_row: int, block: np.ndarray) -> np.ndarray:
        merged = block.astype(np.float32)  # a copy: f16/bf16 blocks are widened, f32 ones not touched in place
        for pair, factor in deltas:
            merged += delta_rows(pair, factor, first_row, first_row + block.shape[0])
        return merged

    return transform


def _replace_weights(adapters: list[LoraAdapter], base: dict[str, TensorSource]) -> dict[str, TensorSource]:
    """Weights the adapters replace, checked in order (a later adapter sees the earlier replacements)."""
    shapes = {name: source.shape for name, source in base.items()}
    replaced: dict[str, TensorSource] = {}
    owner: dict[str, str] = {}
    for adapter in adapters:
        check_against_base(adapter, shapes)
        for name, source in adapter.replacements.items():
            if name in owner:
                raise AdapterError(
                    f"{adapter.directory.name} and {owner[name]} both replace {name}; merge them one at a time"
                )
            owner[name] = adapter.directory.name
            replaced[name] = source
            shapes[name] = source.shape
    return replaced


def _vocab(adapters: list[LoraAdapter], replaced: dict[str, TensorSource], base: dict[str, TensorSource],
           checkpoint: Checkpoint) -> tuple[int, Path]:
    """The merged vocab size and the tokenizer folder: the base's, or that of the adapter saving embeddings."""
    vocab_size = checkpoint.config["vocab_size"]
    embed = replaced.get(EMBED_NAME)
    if embed is None:
        return vocab_size, checkpoint.directory
    rows = embed.shape[0]
    head = replaced.get(LM_HEAD_NAME, base.get(LM_HEAD_NAME))
    if head is not None and head.shape[0] != rows:
        raise AdapterError(
            f"the adapters resize embed_tokens to {rows} rows but lm_head has {head.shape[0]}; "
            "save both with modules_to_save"
        )
    owner = next(a for a in reversed(adapters) if EMBED_NAME in a.replacements)
    if owner.tokenizer_dir is not None:
        return rows, owner.tokenizer_dir
    if rows != vocab_size:
        raise AdapterError(
            f"{owner.directory.name}: the adapter resizes the vocabulary to {rows} tokens but ships no "
            "tokenizer.model or tokenizer.json; save the fine-tuning tokenizer into the adapter folder"
        )
    return vocab_size, checkpoint.directory


def prepare_merge(checkpoint: Checkpoint, loras: Sequence[tuple[str | Path, float]]) -> LoraMerge:
    """Read and check every adapter against the base before anything is written; `loras` pairs each
    adapter folder with its scale (1.0 = as trained, 0 = no effect)."""
    adapters = [read_adapter(path) for path, _ in loras]
    base = {normalized_name(t.name, checkpoint.config): t for t in checkpoint.tensors}
    replaced = _replace_weights(adapters, base)
    vocab_size, tokenizer_dir = _vocab(adapters, replaced, base, checkpoint)
    deltas: dict[str, list[tuple[LoraPair, float]]] = {}
    for adapter, (_, scale) in zip(adapters, loras, strict=True):
        for pair in adapter.pairs:
            if scale != 0:
                deltas.setdefault(pair.base_name, []).append((pair, float(scale) * pair.scaling))
        logger.info("merging %s (%d LoRA pairs, scale %g)", adapter.directory, len(adapter.pairs), scale)
    tensors, transforms = [], {}
    for source in checkpoint.tensors:
        name = normalized_name(source.name, checkpoint.config)
        if name in replaced:
            source = dataclasses.replace(replaced[name], name=source.name)
        if name in deltas:
            transforms[source.name] = merge_transform(deltas[name])
        tensors.append(source)
    config = {**checkpoint.config, "vocab_size": vocab_size}
    merged = dataclasses.replace(checkpoint, config=config, tensors=tensors)
    return LoraMerge(merged, tokenizer_dir, transforms)
