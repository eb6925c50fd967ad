"""Read a PEFT LoRA adapter folder and check it against a base Llama checkpoint, without torch.

An adapter is `adapter_config.json` plus `adapter_model.safetensors` (or `adapter_model.bin`, read through the
same restricted unpickler as checkpoints). This module pairs the lora_A/lora_B tensors by base weight, works out
PEFT's per-module scaling (alpha/r, rsLoRA alpha/sqrt(r), rank_pattern/alpha_pattern) and finds the full
weights an adapter may carry (modules_to_save, resized embeddings). Merging and GGUF writing live elsewhere.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lcpp_zh.convert.hub import download_snapshot, is_repo_id
from lcpp_zh.convert.safetensors_reader import index_safetensors
from lcpp_zh.convert.tensor_source import TensorSource
from lcpp_zh.convert.torch_reader import index_torch_bin
from lcpp_zh.errors import AdapterError

logger = logging.getLogger(__name__)

_PREFIX = "base_model.model."
EMBED_NAME = "model.embed_tokens.weight"
LM_HEAD_NAME = "lm_head.weight"
# Full-weight keys PEFT saves beside the LoRA pairs, best first: the trained copy of a modules_to_save module,
# the base layer of a LoRA-wrapped embedding (saved when the vocabulary was resized), a plain saved module.
_FULL_SUFFIXES = (".modules_to_save.weight", ".base_layer.weight", ".weight")
# What an adapter download needs: config, weights, and the tokenizer a vocabulary-extending adapter ships.
_ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "tokenizer.model",
                  "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "README.md"]


@dataclass(frozen=True)
class LoraPair:
    """One adapted weight: W (out, in) + scaling * B @ A, or for an embedding W (vocab, dim) + scaling * (B @ A).T."""

    base_name: str  # the base checkpoint's tensor name, e.g. model.layers.0.self_attn.q_proj.weight
    a: TensorSource  # (r, in); lora_embedding_A: (r, vocab)
    b: TensorSource  # (out, r); lora_embedding_B: (dim, r)
    scaling: float  # PEFT's alpha / r (or alpha / sqrt(r) with rsLoRA) for this module
    embedding: bool = False

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    @property
    def weight_shape(self) -> tuple[int, int]:
        """The shape of the base weight this pair adapts."""
        if self.embedding:
            return (self.a.shape[1], self.b.shape[0])
        return (self.b.shape[0], self.a.shape[1])


@dataclass
class LoraAdapter:
    """A PEFT LoRA adapter folder: its config, LoRA pairs and the full weights it replaces."""

    directory: Path
    config: dict[str, Any]
    pairs: list[LoraPair] = field(default_factory=list)
    full_weights: dict[str, TensorSource] = field(default_factory=dict)  # base name -> saved weight
    # The base layer under a LoRA-wrapped embedding, saved by PEFT when the vocabulary was resized: the weight
    # the pair was trained on top of (a merge starts from it; a runtime adapter cannot carry it).
    base_layers: dict[str, TensorSource] = field(default_factory=dict)

    @property
    def alpha(self) -> float:
        return float(self.config["lora_alpha"])

    @property
    def replacements(self) -> dict[str, TensorSource]:
        """Base weights a merge takes from the adapter instead of the base (saved modules win)."""
        return {**self.base_layers, **self.full_weights}

    @property
    def tokenizer_dir(self) -> Path | None:
        """The adapter folder when it ships a tokenizer of its own (vocabulary-resizing adapters do)."""
        has = any((self.directory / n).is_file() for n in ("tokenizer.model", "tokenizer.json"))
        return self.directory if has else None


def locate_adapter(source: str | Path) -> Path:
    """A local adapter folder as is, or a hub repo id (e.g. FlagAlpha/Llama2-Chinese-7b-Chat-LoRA) downloaded
    through huggingface_hub, which honours HF_ENDPOINT mirrors and HF_HUB_OFFLINE."""
    path = Path(source).expanduser()
    if path.exists() or not is_repo_id(str(source)):
        return path
    return download_snapshot(str(source), _ADAPTER_FILES, AdapterError, "adapter repository")


def read_adapter_config(directory: Path) -> dict[str, Any]:
    """adapter_config.json of a LoRA adapter, checked for the variants llama.cpp cannot represent."""
    if not directory.is_dir():
        raise AdapterError(f"{directory}: no such adapter folder (nor a hub repo id owner/name)")
    path = directory / "adapter_config.json"
    if not path.is_file():
        raise AdapterError(f"{directory}: no adapter_config.json; not a PEFT LoRA adapter folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{path}: not a JSON object")
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise AdapterError(f"{path}: peft_type {peft_type} is not supported; only LoRA adapters are")
    if config.get("use_dora"):
        raise AdapterError(f"{path}: DoRA adapters (use_dora) are not supported")
    if config.get("fan_in_fan_out"):
        raise AdapterError(f"{path}: fan_in_fan_out adapters (GPT-2 style Conv1D) do not fit a Llama model")
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise AdapterError(f"{path}: {key} must be a positive number (found {value!r})")
    return config


def _pattern_value(patterns: dict[str, Any] | None, module: str, default: float) -> float:
    """PEFT's rank_pattern/alpha_pattern lookup: the first key matching the end of the module's name."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def module_scaling(config: dict[str, Any], module: str, rank: int, where: str = "adapter_config.json") -> float:
    """PEFT's scaling of one module, after checking the tensors' rank against the config's."""
    r = _pattern_value(config.get("rank_pattern"), module, config["r"])
    if rank != r:
        raise AdapterError(
            f"{where}: r is {r} for {module} but its lora_A/lora_B tensors have rank {rank}; "
            "the config does not belong to these weights"
        )
    alpha = _pattern_value(config.get("alpha_pattern"), module, config["lora_alpha"])
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def index_adapter_weights(directory: Path) -> list[TensorSource]:
    """The adapter's tensors, from adapter_model.safetensors or else adapter_model.bin (no code is run)."""
    safetensors = directory / "adapter_model.safetensors"
    if safetensors.is_file():
        return index_safetensors(safetensors)
    pickled = directory / "adapter_model.bin"
    if pickled.is_file():
        return index_torch_bin(pickled)
    raise AdapterError(f"{directory}: no adapter_model.safetensors or adapter_model.bin")


def _split_key(key: str) -> tuple[str, str]:
    """(module path, kind) of a saved adapter key; the kind is A, B, EA, EB or a full-weight suffix."""
    name = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
    name = name.replace(".default.", ".")  # keys saved with the adapter name left in
    for marker, kind in ((".lora_A.weight", "A"), (".lora_B.weight", "B"),
                         (".lora_embedding_A", "EA"), (".lora_embedding_B", "EB")):
        if name.endswith(marker):
            return name[: -len(marker)], kind
    if ".original_module." in name:
        return name, "ignore"
    for suffix in _FULL_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    return name, "unknown"


def read_adapter(directory: str | Path) -> LoraAdapter:
    """Read and pair an adapter's tensors (a folder or hub repo id); shapes are checked against each other,
    not yet against a base."""
    directory = locate_adapter(directory)
    config = read_adapter_config(directory)
    adapter = LoraAdapter(directory, config)
    halves: dict[str, dict[str, TensorSource]] = {}
    full: dict[str, dict[str, TensorSource]] = {}
    for source in index_adapter_weights(directory):
        module, kind = _split_key(source.name)
        if kind == "ignore":
            continue
        if kind == "unknown" or len(source.shape) != 2:
            raise AdapterError(
                f"{directory.name}: unexpected tensor {source.name} in the adapter (LoRA bias, DoRA magnitude "
                "or another PEFT method?); only LoRA A/B pairs and saved modules are supported"
            )
        target = halves if kind in ("A", "B", "EA", "EB") else full
        target.setdefault(module, {})[kind] = source
    for module, parts in halves.items():
        adapter.pairs.append(_make_pair(directory, config, module, parts))
    for module, parts in full.items():
        base_name = module + ".weight"
        saved = parts.get(".modules_to_save.weight") or parts.get(".weight")
        if saved is not None:
            adapter.full_weights[base_name] = saved
        elif ".base_layer.weight" in parts:
            adapter.base_layers[base_name] = parts[".base_layer.weight"]
    if not adapter.pairs and not adapter.full_weights:
        raise AdapterError(f"{directory.name}: the adapter holds no LoRA tensors")
    return adapter


def _make_pair(directory: Path, config: dict[str, Any], module: str, parts: dict[str, TensorSource]) -> LoraPair:
    embedding = "EA" in parts or "EB" in parts
    a, b = (parts.get("EA"), parts.get("EB")) if embedding else (parts.get("A"), parts.get("B"))
    if a is None or b is None:
        missing = "lora_A" if a is None else "lora_B"
        raise AdapterError(f"{directory.name}: {module} has no {missing} tensor; the adapter is incomplete")
    if a.shape[0] != b.shape[1]:
        raise AdapterError(
            f"{directory.name}: rank mismatch in {module}: lora_A has rank {a.shape[0]}, lora_B {b.shape[1]}"
        )
    scaling = module_scaling(config, module, a.shape[0], f"{directory.name}/adapter_config.json")
    return LoraPair(module + ".weight", a, b, scaling, embedding)


def check_against_base(adapter: LoraAdapter, base_shapes: dict[str, tuple[int, ...]]) -> None:
    """Every adapted or replaced weight must exist in the base with the shape the adapter expects."""
    name = adapter.directory.name
    replacements = adapter.replacements
    replaced = {n: tuple(s.shape) for n, s in replacements.items()}
    for pair in adapter.pairs:
        shape = replaced.get(pair.base_name) or base_shapes.get(pair.base_name)
        if shape is None:
            raise AdapterError(
                f"{name}: the adapter adapts {pair.base_name}, which the base model does not have "
                "(wrong base model?)"
            )
        if tuple(shape) != pair.weight_shape:
            raise AdapterError(
                f"{name}: {pair.base_name} is {list(pair.weight_shape)} in the adapter but {list(shape)} in the "
                "base model (wrong base model?)"
            )
    for base_name, source in replacements.items():
        shape = base_shapes.get(base_name)
        if shape is None:
            raise AdapterError(f"{name}: the adapter replaces {base_name}, which the base model does not have")
        vocab_rows = base_name in (EMBED_NAME, LM_HEAD_NAME)
        if tuple(source.shape[1:]) != tuple(shape[1:]) or (not vocab_rows and source.shape != shape):
            raise AdapterError(
                f"{name}: the adapter's {base_name} is {list(source.shape)} but the base model's is "
                f"{list(shape)} (wrong base model?)"
            )


def base_shapes_from_config(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The Llama weight shapes a config implies: for a base folder that has only its config.json."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    q_rows = config["num_attention_heads"] * config["head_dim"]
    kv_rows = config["num_key_value_heads"] * config["head_dim"]
    shapes: dict[str, tuple[int, ...]] = {EMBED_NAME: (config["vocab_size"], hidden)}
    if not config.get("tie_word_embeddings"):
        shapes[LM_HEAD_NAME] = (config["vocab_size"], hidden)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (q_rows, hidden), p + "self_attn.k_proj.weight": (kv_rows, hidden),
            p + "self_attn.v_proj.weight": (kv_rows, hidden), p + "self_attn.o_proj.weight": (hidden, q_rows),
            p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
            p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
        })
    shapes["model.norm.weight"] = (hidden,)
    return shapes
