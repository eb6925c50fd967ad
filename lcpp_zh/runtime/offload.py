"""GPU offload planning: how many layers go to which GPU, from the GGUF's tensor sizes, the KV cache for the
chosen context, a safety margin and each GPU's free memory; plus the load-with-fallback loop.

`plan_offload` is a pure function (unit-tested with simulated GPUs). GPUs are found with nvidia-smi;
a CPU-only llama-cpp-python build (llama_supports_gpu_offload() false) always plans 0 layers.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lcpp_zh.errors import EngineError, ModelError

logger = logging.getLogger(__name__)

GiB = 1 << 30
MiB = 1 << 20
# Room left on every GPU for llama.cpp's compute buffers and the CUDA context itself.
MARGIN_BYTES = 640 * MiB
MARGIN_FRACTION = 0.05
_LAYER = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    free: int
    total: int


@dataclass(frozen=True)
class ModelSizes:
    """Bytes per repeating layer, bytes of the output head, and what a KV cache cell costs per layer."""

    layer_bytes: tuple[int, ...]
    output_bytes: int
    kv_bytes_per_token_layer: int

    @property
    def n_layers(self) -> int:
        return len(self.layer_bytes)

    def kv_bytes(self, n_ctx: int, n_layers: int | None = None) -> int:
        return self.kv_bytes_per_token_layer * n_ctx * (self.n_layers if n_layers is None else n_layers)


@dataclass
class OffloadPlan:
    n_gpu_layers: int                 # llama.cpp's n_gpu_layers (n_layers + 1 also puts the output head)
    n_layers: int
    tensor_split: list[float] | None = None
    main_gpu: int = 0
    kv_bytes: int = 0
    layers_per_gpu: dict[int, int] = field(default_factory=dict)
    note: str = ""

    def describe(self) -> str:
        """One line for the user, e.g. `28/32 layers on GPU 0, KV 1.0 GiB`."""
        if self.n_gpu_layers == 0:
            return self.note or f"0/{self.n_layers} layers on GPU: running on the CPU"
        on = min(self.n_gpu_layers, self.n_layers)
        where = ", ".join(f"{n} on GPU {g}" for g, n in self.layers_per_gpu.items() if n) or "GPU"
        head = f"{on}/{self.n_layers} layers" + (f" on GPU {next(iter(self.layers_per_gpu))}"
                                                  if len(self.layers_per_gpu) == 1 else f" ({where})")
        return f"{head}, KV {self.kv_bytes / GiB:.1f} GiB" + (f"; {self.note}" if self.note else "")


def read_model_sizes(path: str | Path) -> ModelSizes:
    """Tensor sizes and KV geometry from a GGUF file's header (no weights are read)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError) as exc:  # gguf-py's ways of meeting a broken file
        raise ModelError(f"{path}: corrupt or truncated GGUF ({exc})") from exc
    arch = _field(reader, "general.architecture") or "llama"
    layers: dict[int, int] = {}
    output = 0
    embeddings = 0
    for tensor in reader.tensors:
        match = _LAYER.match(tensor.name)
        if match:
            layers[int(match.group(1))] = layers.get(int(match.group(1)), 0) + int(tensor.n_bytes)
        elif tensor.name.startswith("output"):
            output += int(tensor.n_bytes)
        elif tensor.name == "token_embd.weight":
            embeddings = int(tensor.n_bytes)
    if not any(t.name == "output.weight" for t in reader.tensors):
        output += embeddings  # tied embeddings: llama.cpp puts a copy of token_embd with the output head
    n_embd = int(_field(reader, f"{arch}.embedding_length") or 0)
    n_head = int(_field(reader, f"{arch}.attention.head_count") or 1)
    n_head_kv = int(_field(reader, f"{arch}.attention.head_count_kv") or n_head)
    head_dim = int(_field(reader, f"{arch}.attention.key_length") or n_embd // max(n_head, 1))
    kv_per = 2 * n_head_kv * head_dim * 2  # K and V, f16 cells
    return ModelSizes(tuple(layers[i] for i in sorted(layers)), output, kv_per)


def _field(reader: Any, key: str) -> Any:
    entry = reader.fields.get(key)
    return entry.contents() if entry is not None else None


def plan_offload(sizes: ModelSizes, gpus: Sequence[GpuInfo], n_ctx: int, *, requested: str | int = "auto",
                 use_gpus: Sequence[int] | None = None, main_gpu: int | None = None) -> OffloadPlan:
    """Place as many layers as fit, filling the chosen GPUs in order; each layer brings its KV cache."""
    n = sizes.n_layers
    chosen = [g for g in gpus if use_gpus is None or g.index in use_gpus]
    if not chosen or requested in (0, "0"):
        note = "no GPU chosen: running on the CPU" if chosen or not gpus else ""
        return OffloadPlan(0, n, note=note)
    per_layer = [b + sizes.kv_bytes_per_token_layer * n_ctx for b in sizes.layer_bytes]
    counts: dict[int, int] = {}
    layer = 0
    for gpu in chosen:
        budget = gpu.free - max(MARGIN_BYTES, int(gpu.total * MARGIN_FRACTION))
        if gpu is chosen[-1] or layer + 1 >= n:  # the output head lives with the last layers
            budget -= sizes.output_bytes
        start = layer
        while layer < n and budget >= per_layer[layer]:
            budget -= per_layer[layer]
            layer += 1
        counts[gpu.index] = layer - start
    if isinstance(requested, int) or str(requested).isdigit():
        layer = min(int(requested), n)  # an explicit N is obeyed; the plan only splits it
    elif requested == "all":
        layer = n
    total = sum(counts.values())
    if total and total != layer:
        counts = _rescale(counts, layer)
    n_gpu_layers = n + 1 if layer >= n else layer
    split = _tensor_split(counts, gpus) if len(chosen) > 1 or use_gpus else None
    main = main_gpu if main_gpu is not None else chosen[0].index
    return OffloadPlan(n_gpu_layers, n, split, main, sizes.kv_bytes(n_ctx, min(layer, n)), counts)


def _rescale(counts: dict[int, int], target: int) -> dict[int, int]:
    total = sum(counts.values())
    scaled = {g: c * target // total for g, c in counts.items()}
    first = next(iter(scaled))
    scaled[first] += target - sum(scaled.values())
    return scaled


def _tensor_split(counts: dict[int, int], gpus: Sequence[GpuInfo]) -> list[float] | None:
    """Proportions per device index, 0 for GPUs left out (llama.cpp splits layers by these)."""
    total = sum(counts.values())
    if not total:
        return None
    top = max(g.index for g in gpus)
    return [counts.get(i, 0) / total for i in range(top + 1)]


def gpu_offload_supported() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def detect_gpus() -> list[GpuInfo]:
    """NVIDIA GPUs and their free memory, from nvidia-smi; [] when there is none."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=index,name,memory.free,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4 and parts[0].isdigit():
            gpus.append(GpuInfo(int(parts[0]), parts[1], int(float(parts[2])) * MiB, int(float(parts[3])) * MiB))
    return gpus


def parse_gpu_list(text: str | None) -> list[int] | None:
    """--gpus "0,1" -> [0, 1]."""
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise EngineError(f"--gpus {text!r}: expected GPU numbers separated by commas, like 0,1") from None


def plan_for(model_path: Path, n_ctx: int, requested: str | int, use_gpus: Sequence[int] | None,
             main_gpu: int | None) -> OffloadPlan:
    """The plan on this machine: CPU with a one-line reason, or layers on the GPUs that are there."""
    sizes = read_model_sizes(model_path)
    if requested in (0, "0"):
        return OffloadPlan(0, sizes.n_layers, note="running on the CPU (--gpu-layers 0)")
    if not gpu_offload_supported():
        return OffloadPlan(0, sizes.n_layers, note="llama-cpp-python is built without GPU support: running on "
                                                   "the CPU (reinstall with `make install CUDA=1`)")
    gpus = detect_gpus()
    if not gpus:
        return OffloadPlan(0, sizes.n_layers, note="no GPU found: running on the CPU")
    return plan_offload(sizes, gpus, n_ctx, requested=requested, use_gpus=use_gpus, main_gpu=main_gpu)


T = TypeVar("T")


def load_with_fallback(load: Callable[[OffloadPlan], T], plan: OffloadPlan,
                       report: Callable[[str], None] = logger.warning) -> tuple[T, OffloadPlan]:
    """Call `load(plan)`; when loading fails with layers on the GPU (out of memory), retry with a quarter
    fewer layers each time, down to the CPU. A failure on the CPU is raised as is."""
    while True:
        try:
            return load(plan), plan
        except (ModelError, EngineError) as exc:
            if plan.n_gpu_layers <= 0:
                raise
            fewer = min(plan.n_gpu_layers, plan.n_layers) * 3 // 4
            report(f"loading with {plan.n_gpu_layers} GPU layers failed ({exc}); retrying with {fewer}")
            counts = _rescale(plan.layers_per_gpu, fewer) if fewer and plan.layers_per_gpu else {}
            plan = OffloadPlan(fewer, plan.n_layers, plan.tensor_split, plan.main_gpu,
                               plan.kv_bytes * fewer // max(plan.n_layers, 1), counts,
                               note="" if fewer else "GPU out of memory: running on the CPU")


__all__ = ["GpuInfo", "ModelSizes", "OffloadPlan", "read_model_sizes", "plan_offload", "detect_gpus",
           "plan_for", "load_with_fallback", "parse_gpu_list", "gpu_offload_supported"]
