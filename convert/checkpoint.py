"""Open a local Hugging Face Llama checkpoint: its config (with LlamaConfig's defaults) and weight files.

Reads config.json as data only: `auto_map` custom code (Atom) is never imported or run. Weights are
indexed, not loaded: safetensors shards are preferred, PyTorch .bin shards are the fallback, exactly as
llama.cpp's converter chooses them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lcpp_zh.convert.safetensors_reader import index_safetensors
from lcpp_zh.convert.tensor_source import TensorSource
from lcpp_zh.convert.torch_reader import index_torch_bin
from lcpp_zh.errors import CheckpointError

logger = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "LLaMAForCausalLM", "MistralForCausalLM")

# transformers' LlamaConfig defaults (4.57), which llama.cpp's converter sees through AutoConfig.to_dict().
_LLAMA_DEFAULTS: dict[str, Any] = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": None,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "head_dim": None,
}


@dataclass
class Checkpoint:
    """A local checkpoint folder: config values and the tensors of its weight files, in file order."""

    directory: Path
    config: dict[str, Any]
    tensors: list[TensorSource] = field(default_factory=list)
    display_name: str | None = None  # a hub repo id, when the folder came from the hub

    @property
    def architecture(self) -> str:
        return self.config["architectures"][0]


def read_config(directory: Path) -> dict[str, Any]:
    """config.json with LlamaConfig's defaults filled in; unknown keys are kept as transformers keeps them."""
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory}: no config.json; not a Hugging Face model folder")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    architectures = raw.get("architectures") or []
    if not architectures or architectures[0] not in SUPPORTED_ARCHITECTURES:
        found = architectures[0] if architectures else f"model_type {raw.get('model_type')!r}"
        raise CheckpointError(
            f"{path}: architecture {found} is not supported; lcpp-zh converts Llama-architecture models "
            f"({', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    config = {**_LLAMA_DEFAULTS, **raw}
    if config["num_key_value_heads"] is None:
        config["num_key_value_heads"] = config["num_attention_heads"]
    if config["head_dim"] is None:
        config["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    if config.get("num_local_experts"):
        raise CheckpointError(f"{path}: mixture-of-experts models are not supported")
    scaling = config.get("rope_scaling")
    if isinstance(scaling, dict) and "type" in scaling:
        # transformers copies the legacy `type` key to `rope_type`.
        config["rope_scaling"] = {**scaling, "rope_type": scaling["type"]}
    return config


def _part_names(directory: Path, prefix: str, suffix: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(prefix) and p.name.endswith(suffix))


def _weight_files(directory: Path) -> tuple[list[str], dict[str, str] | None]:
    """The weight files to read and, for sharded checkpoints, the index's weight map."""
    parts = _part_names(directory, "model", ".safetensors")
    use_safetensors = bool(parts) or (directory / "model.safetensors.index.json").is_file()
    if not use_safetensors:
        parts = _part_names(directory, "pytorch_model", ".bin")
    index_path = directory / ("model.safetensors.index.json" if use_safetensors else "pytorch_model.bin.index.json")
    weight_map = None
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        except (KeyError, TypeError, json.JSONDecodeError):
            raise CheckpointError(f"{index_path}: no readable weight_map") from None
        parts = sorted(set(weight_map.values()))
    if not parts:
        raise CheckpointError(
            f"{directory}: no weights found (expected model*.safetensors or pytorch_model*.bin)"
        )
    missing = [p for p in parts if not (directory / p).is_file()]
    if missing:
        raise CheckpointError(f"{directory}: missing weight files {', '.join(missing)}")
    return parts, weight_map


def index_tensors(directory: Path) -> list[TensorSource]:
    """Every tensor of the checkpoint, shard by shard, checked against the index when there is one."""
    parts, weight_map = _weight_files(directory)
    tensors: list[TensorSource] = []
    for part in parts:
        path = directory / part
        logger.info("indexing %s", part)
        tensors.extend(index_safetensors(path) if part.endswith(".safetensors") else index_torch_bin(path))
    if weight_map is not None:
        found = {t.name for t in tensors}
        missing = sorted(set(weight_map) - found)
        if missing:
            raise CheckpointError(f"{directory}: tensors listed in the index are missing: {', '.join(missing[:5])}")
    return tensors


def open_checkpoint(directory: Path, display_name: str | None = None) -> Checkpoint:
    """Config and tensor index of a local checkpoint folder."""
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such model folder")
    config = read_config(directory)
    return Checkpoint(directory, config, index_tensors(directory), display_name)
