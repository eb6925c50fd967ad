"""LoRA adapters on a llama.cpp context at runtime: load GGUF adapters, list them, change scales without reloading.

Works on raw llama-cpp-python handles (a llama_model pointer, a llama_context pointer) so that the engine, which
owns the context, calls it from its own thread. Scales follow llama-server's /lora-adapters: 0 disables an
adapter. Changing scales changes what cached KV entries mean: the caller must drop its prefix cache.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp

from lcpp_zh.errors import ModelError

logger = logging.getLogger(__name__)


@dataclass
class LoadedLora:
    """One adapter loaded for a model: its id (load order), a short name, its file, scale and alpha."""

    id: int
    name: str
    path: Path
    scale: float
    alpha: float
    handle: Any  # llama_adapter_lora_p

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of GET /v1/lora (llama-server's /lora-adapters, plus name and alpha)."""
        return {"id": self.id, "name": self.name, "path": str(self.path), "scale": self.scale, "alpha": self.alpha}


def read_adapter_header(path: Path) -> dict[str, Any]:
    """The adapter's general.type, adapter.type, architecture and alpha; a clear error for anything that is
    not a GGUF LoRA adapter (a model file, a PEFT folder) before llama.cpp is asked to load it."""
    import gguf

    if path.is_dir():
        hint = (f"convert it first: lcpp-zh convert-lora {path} --base BASE_MODEL_DIR -o {path.name}.gguf"
                if (path / "adapter_config.json").is_file() else "give a GGUF LoRA adapter file")
        raise ModelError(f"{path}: is a folder, not a GGUF LoRA adapter; {hint}")
    if not path.is_file():
        raise ModelError(f"{path}: no such LoRA adapter file")
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as exc:
        raise ModelError(f"{path}: not a GGUF file ({exc})") from None

    def value(key: str) -> Any:
        field = reader.get_field(key)
        return field.contents() if field is not None else None

    header = {"type": value("general.type"), "adapter_type": value("adapter.type"),
              "architecture": value("general.architecture"), "alpha": value("adapter.lora.alpha")}
    if header["type"] != "adapter" or header["adapter_type"] != "lora":
        raise ModelError(f"{path}: not a LoRA adapter (general.type {header['type']!r}); "
                         "give a file written by `lcpp-zh convert-lora` or llama.cpp's convert_lora_to_gguf.py")
    return header


def _model_architecture(model: Any) -> str | None:
    buf = ctypes.create_string_buffer(128)
    n = llama_cpp.llama_model_meta_val_str(model, b"general.architecture", buf, ctypes.sizeof(buf))
    return buf.value.decode("utf-8", "replace") if n >= 0 else None


def _check_scale(scale: Any) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ModelError(f"LoRA scale must be a finite number, got {scale!r}")
    return float(scale)


class LoraSet:
    """The adapters loaded for one model; `apply(ctx)` puts their current scales on a context."""

    def __init__(self, model: Any, specs: Iterable[str | os.PathLike | tuple[str | os.PathLike, float]] = ()):
        self._model = model
        self.adapters: list[LoadedLora] = []
        try:
            for spec in specs:
                path, scale = spec if isinstance(spec, tuple) else (spec, 1.0)
                self.load(path, scale)
        except BaseException:
            self.free()
            raise

    def load(self, path: str | os.PathLike, scale: float = 1.0) -> LoadedLora:
        """Load one adapter for the model (not yet applied to any context)."""
        path, scale = Path(path), _check_scale(scale)
        header = read_adapter_header(path)
        arch = _model_architecture(self._model)
        if arch is not None and header["architecture"] != arch:
            raise ModelError(f"{path}: a LoRA adapter for {header['architecture']} models, not for this {arch} model")
        handle = llama_cpp.llama_adapter_lora_init(self._model, str(path).encode("utf-8"))
        if not handle:
            raise ModelError(f"{path}: llama.cpp could not load this LoRA adapter for the model; its tensors do "
                             "not fit (converted for a different base model?)")
        name = self._unique_name(path.name.removesuffix(".gguf"))
        loaded = LoadedLora(len(self.adapters), name, path, scale, float(header["alpha"] or 0.0), handle)
        self.adapters.append(loaded)
        logger.info("loaded LoRA adapter %s (%s) at scale %g", name, path, scale)
        return loaded

    def _unique_name(self, stem: str) -> str:
        names, name, n = {a.name for a in self.adapters}, stem, 2
        while name in names:
            name, n = f"{stem}-{n}", n + 1
        return name

    def find(self, key: str | int) -> LoadedLora:
        """An adapter by id (int or digits) or name."""
        for adapter in self.adapters:
            if adapter.name == key or str(adapter.id) == str(key):
                return adapter
        known = ", ".join(f"{a.id}:{a.name}" for a in self.adapters) or "none loaded"
        raise ModelError(f"no LoRA adapter {key!r} (adapters: {known})")

    def set_scale(self, key: str | int, scale: float) -> LoadedLora:
        """Change one adapter's scale; takes effect at the next apply()."""
        adapter = self.find(key)
        adapter.scale = _check_scale(scale)
        return adapter

    def set_scales(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """llama-server's POST /lora-adapters: [{"id" or "name", "scale"}]; unlisted adapters get scale 0.
        All entries are checked before any scale changes."""
        new = {a.id: 0.0 for a in self.adapters}
        for entry in entries:
            if not isinstance(entry, Mapping) or ("id" not in entry and "name" not in entry):
                raise ModelError(f"each LoRA entry needs an id or a name and a scale, got {entry!r}")
            adapter = self.find(entry["id"] if "id" in entry else entry["name"])
            new[adapter.id] = _check_scale(entry.get("scale", 0.0))
        for adapter in self.adapters:
            adapter.scale = new[adapter.id]

    def apply(self, ctx: Any) -> None:
        """Put the adapters at their current scales on `ctx` (llama.cpp skips zero scales)."""
        n = len(self.adapters)
        handles = (llama_cpp.llama_adapter_lora_p_ctypes * max(n, 1))(*[a.handle for a in self.adapters])
        scales = (ctypes.c_float * max(n, 1))(*[a.scale for a in self.adapters])
        if llama_cpp.llama_set_adapters_lora(ctx, handles if n else None, n, scales if n else None) != 0:
            raise ModelError("llama.cpp refused the LoRA adapters for this context")

    def describe(self) -> list[dict[str, Any]]:
        return [a.as_dict() for a in self.adapters]

    def free(self) -> None:
        """Free the adapters (before the model; llama.cpp frees any left with the model anyway)."""
        for adapter in self.adapters:
            if adapter.handle:
                llama_cpp.llama_adapter_lora_free(adapter.handle)
                adapter.handle = None
        self.adapters = []
