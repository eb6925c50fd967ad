"""Write a PEFT LoRA adapter as a GGUF LoRA adapter, the file llama.cpp attaches at runtime.

Same layout as llama.cpp's convert_lora_to_gguf.py: general.type=adapter, adapter.type=lora, adapter.lora.alpha,
and per adapted weight `<gguf name>.lora_a` (r, in) and `.lora_b` (out, r), the Q/K permutation applied to
lora_b because its rows are the weight's output rows. An adapter that carries full weights (modules_to_save,
a resized vocabulary) cannot be applied at runtime and is refused with a pointer to merging it instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gguf
import numpy as np

from lcpp_zh.common.atomic import atomic_path, check_writable
from lcpp_zh.convert.checkpoint import index_tensors, read_config
from lcpp_zh.convert.lora import (
    AdapterError,
    LoraAdapter,
    LoraPair,
    base_shapes_from_config,
    check_against_base,
    read_adapter,
)
from lcpp_zh.convert.lora_merge import normalized_name
from lcpp_zh.convert.tensor_plan import FILE_TYPE_TENSOR_TYPE, OUTTYPES, permute_rows

logger = logging.getLogger(__name__)

# Adapters take the same output types as models.
ADAPTER_OUTTYPES = OUTTYPES


def base_shapes(base_dir: Path, config: dict) -> dict[str, tuple[int, ...]]:
    """The base's weight shapes: from its weight files when present, else implied by its config.json
    (llama.cpp's converter also needs only the base config)."""
    has_weights = any(base_dir.glob("model*.safetensors")) or any(base_dir.glob("pytorch_model*.bin"))
    if not has_weights:
        return base_shapes_from_config(config)
    return {normalized_name(t.name, config): t.shape for t in index_tensors(base_dir)}


def refuse_full_weights(adapter: LoraAdapter, shapes: dict[str, tuple[int, ...]]) -> None:
    """llama.cpp adapters hold only LoRA pairs: saved modules or a resized vocabulary must be merged."""
    full = sorted(adapter.full_weights)
    full += [n for n, s in adapter.base_layers.items() if tuple(s.shape) != tuple(shapes.get(n, ()))]
    if full:
        raise AdapterError(
            f"{adapter.directory.name}: the adapter carries full weights ({', '.join(full)}; modules_to_save or a "
            "resized vocabulary), which llama.cpp cannot apply at runtime; merge it into the model instead: "
            f"lcpp-zh convert BASE --lora {adapter.directory} -o merged.gguf"
        )


def pair_arrays(pair: LoraPair, config: dict, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(lora_a, lora_b) as llama.cpp wants them for one pair, in the adapter's float type."""
    a, b = pair.a.read_all(), pair.b.read_all()
    if a.dtype != b.dtype:
        a, b = a.astype(np.float32), b.astype(np.float32)
    if pair.base_name.endswith("q_proj.weight"):
        b = permute_rows(b, b.shape[0] // config["num_attention_heads"])
    elif pair.base_name.endswith("k_proj.weight"):
        b = permute_rows(b, b.shape[0] // config["num_key_value_heads"])
    # llama.cpp scales by alpha / rank; rsLoRA (alpha / sqrt(r)) and alpha_pattern need the rest in lora_b.
    ratio = pair.scaling / (alpha / pair.rank)
    if abs(ratio - 1.0) > 1e-9:
        b = b.astype(np.float32) * np.float32(ratio)
    if pair.embedding:
        a = np.ascontiguousarray(a.T)  # llama.cpp's token_embd lora_a is (vocab, r): rows are looked up by id
    return a, b


def _encode(data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.QuantError:  # rows not divisible by the Q8_0 block (lora_b rows have r elements)
        return gguf.quants.quantize(data, gguf.GGMLQuantizationType.F16), gguf.GGMLQuantizationType.F16


def _file_type(adapter: LoraAdapter, outtype: str) -> gguf.LlamaFileType:
    if outtype != "auto":
        if outtype not in ADAPTER_OUTTYPES:
            raise AdapterError(f"unknown outtype {outtype!r}; choose one of {', '.join(ADAPTER_OUTTYPES)}, auto")
        return ADAPTER_OUTTYPES[outtype]
    first = adapter.pairs[0].a.dtype if adapter.pairs else "F32"  # as upstream: the first pair decides
    return gguf.LlamaFileType.MOSTLY_BF16 if first == "BF16" else gguf.LlamaFileType.MOSTLY_F16


def convert_lora(adapter_dir: str | Path, base_dir: str | Path | None, destination: str | Path,
                 outtype: str = "f32") -> Path:
    """Write `adapter_dir` (PEFT LoRA) as a GGUF LoRA adapter for the Llama model in `base_dir` (only its
    config.json is needed; weights, when present, are used to check shapes). Returns the path written."""
    destination = Path(destination)
    check_writable(destination)
    adapter = read_adapter(adapter_dir)
    base = _locate_base(adapter, base_dir)
    config = read_config(base)
    shapes = base_shapes(base, config)
    refuse_full_weights(adapter, shapes)
    check_against_base(adapter, shapes)
    if not adapter.pairs:
        raise AdapterError(f"{adapter.directory.name}: the adapter holds no LoRA pairs")
    qtype = FILE_TYPE_TENSOR_TYPE[_file_type(adapter, outtype)]
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    for pair in adapter.pairs:
        gguf_name = name_map.get_name(pair.base_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise AdapterError(f"{adapter.directory.name}: {pair.base_name} has no place in a llama GGUF")
        for suffix, data in zip((".lora_a", ".lora_b"), pair_arrays(pair, config, adapter.alpha), strict=True):
            encoded, used = _encode(data, qtype)
            writer.add_tensor(gguf_name + suffix, encoded, raw_dtype=used)
    _add_metadata(writer, adapter, base)
    with atomic_path(destination) as temporary:
        writer.write_header_to_file(path=temporary)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return destination


def _locate_base(adapter: LoraAdapter, base_dir: str | Path | None) -> Path:
    """--base, or the adapter's base_model_name_or_path when that is a local model folder."""
    if base_dir is None:
        named = adapter.config.get("base_model_name_or_path")
        if named and (Path(named) / "config.json").is_file():
            return Path(named)
        raise AdapterError(
            f"{adapter.directory.name}: give the base model folder with --base (adapter_config.json names "
            f"{named!r}, which is not a local model folder)"
        )
    base = Path(base_dir)
    if not (base / "config.json").is_file():
        raise AdapterError(f"{base}: no config.json; --base must be the base model's Hugging Face folder")
    return base


def _add_metadata(writer: gguf.GGUFWriter, adapter: LoraAdapter, base: Path) -> None:
    """general.* from the adapter's model card (as upstream), the adapter type and its alpha."""
    total, shared, experts, expert_count = writer.get_total_parameter_count()
    metadata = gguf.Metadata.load(None, adapter.directory, None, total)
    if metadata.name is None:
        metadata.name = base.name
    if metadata.size_label is None and total > 0:
        metadata.size_label = gguf.size_label(total, shared, experts, expert_count)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    metadata.set_gguf_meta_model(writer)
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, adapter.alpha)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
