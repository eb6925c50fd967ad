"""Offload planning: how many layers go to which device (GPU, iGPU, RPC worker; the CPU takes the rest), from
the GGUF's tensor sizes, the KV cache for the chosen context, a safety margin and each device's free memory as
llama.cpp's backend registry reports it; plus the load-with-fallback loop.

`plan_offload` is a pure function over Device records (unit-tested with simulated CUDA, Metal, Vulkan, ROCm,
SYCL and RPC lists). The chosen devices reach llama.cpp by name (llama_model_params.devices) with a tensor_split.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lcpp_zh.errors import EngineError, ModelError
from lcpp_zh.runtime.devices import Device, select_devices

logger = logging.getLogger(__name__)

GiB = 1 << 30
MiB = 1 << 20
# Room left on every device for llama.cpp's compute buffers and the driver's own context.
MARGIN_BYTES = 640 * MiB
MARGIN_FRACTION = 0.05
_LAYER = re.compile(r"^blk\.(\d+)\.")
# Bytes per KV element of each llama.cpp cache type (ggml block size / elements per block).
KV_ELEMENT_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32,
                    "iq4_nl": 18 / 32, "q5_0": 22 / 32, "q5_1": 24 / 32}


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
    n_gpu_layers: int                 # llama.cpp's n_gpu_layers: offloaded layers + 1 for the output head
    n_layers: int
    tensor_split: list[float] | None = None   # over `devices`, in their order
    main_gpu: int = 0
    kv_bytes: int = 0
    layers_per_device: dict[str, int] = field(default_factory=dict)  # device name -> layers, in layer order
    labels: dict[str, str] = field(default_factory=dict)             # device name -> its label in the line
    note: str = ""
    rpc: list[str] = field(default_factory=list)                     # workers to register before loading

    @property
    def devices(self) -> list[str]:
        """The device names for llama_model_params.devices (those that got layers)."""
        return [name for name, n in self.layers_per_device.items() if n]

    @property
    def offloaded(self) -> int:
        return sum(self.layers_per_device.values())

    def describe(self) -> str:
        """One line, e.g. `20/30 layers offloaded: 10 on RPC0 127.0.0.1:50052 (free 11.2 GiB), 10 on RPC1 ...,
        10 on CPU; KV 0.1 GiB`."""
        if self.n_gpu_layers == 0:
            return self.note or f"0/{self.n_layers} layers offloaded: running on the CPU"
        parts = [f"{n} on {self.labels.get(name, name)}" for name, n in self.layers_per_device.items() if n]
        cpu = self.n_layers - self.offloaded
        if cpu > 0:
            parts.append(f"{cpu} on CPU")
        line = f"{self.offloaded}/{self.n_layers} layers offloaded: {', '.join(parts)}; KV {self.kv_bytes / GiB:.1f} GiB"
        return line + (f"; {self.note}" if self.note else "")


def read_model_sizes(path: str | Path, cache_types: tuple[str, str] = ("f16", "f16")) -> ModelSizes:
    """Tensor sizes and KV geometry from a GGUF file's header (no weights are read); the KV at its real size
    for the K and V cache types."""
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
    kv_per = round(n_head_kv * head_dim * sum(KV_ELEMENT_BYTES[t] for t in cache_types))  # K and V cells
    return ModelSizes(tuple(layers[i] for i in sorted(layers)), output, kv_per)


def _field(reader: Any, key: str) -> Any:
    entry = reader.fields.get(key)
    return entry.contents() if entry is not None else None


def plan_offload(sizes: ModelSizes, devices: Sequence[Device], n_ctx: int, *, requested: str | int = "auto",
                 gpus: str | None = None, tensor_split: Sequence[float] | None = None,
                 main_gpu: int | None = None) -> OffloadPlan:
    """Split the layers over the chosen devices by their free memory; each layer brings its KV cache and the
    last device holds the output head. With only RPC workers to offload to (a CPU-only machine) and
    --gpu-layers auto, the local CPU takes its share by free memory too; otherwise it takes what is left."""
    n = sizes.n_layers
    chosen = _order(select_devices(devices, gpus), explicit=bool(gpus))
    cpu = next((d for d in devices if d.type == "cpu"), None)
    cpu_peer = requested == "auto" and tensor_split is None and cpu is not None and (
        cpu in chosen or (not gpus and chosen and all(d.is_rpc for d in chosen)))
    chosen = [d for d in chosen if d.offloads]
    # A unified-memory device (Apple's Metal, an iGPU) holds its layers in the CPU's own RAM: a CPU share of
    # its own would count that memory twice and move layers off the faster device for nothing.
    cpu_peer = cpu_peer and not any(d.unified_memory for d in chosen)
    if not chosen or requested in (0, "0"):
        return OffloadPlan(0, n, note="" if requested in (0, "0") or not chosen and not gpus
                           else "no GPU chosen: running on the CPU")
    per_layer = sum(sizes.layer_bytes) / max(n, 1) + sizes.kv_bytes_per_token_layer * n_ctx
    budgets = [_budget(d) - (sizes.output_bytes if d is chosen[-1] else 0) for d in chosen]
    if tensor_split is not None:
        if len(tensor_split) != len(chosen) or sum(tensor_split) <= 0 or min(tensor_split) < 0:
            names = ", ".join(d.name for d in chosen)
            raise EngineError(f"--tensor-split {','.join(f'{x:g}' for x in tensor_split)}: give {len(chosen)} "
                              f"non-negative proportions, one per device ({names})")
        target = n if requested in ("auto", "all") else min(int(requested), n)
        counts = _share(target, list(tensor_split), None)
    else:
        slots = budgets + ([_budget(cpu)] if cpu_peer and cpu is not None else [])
        caps = [max(int(b // per_layer), 0) for b in slots]
        if requested == "auto":
            target = min(n, sum(caps))
        else:  # an explicit N (or all) is obeyed; the plan only splits it, over the devices alone
            target = n if requested == "all" else min(int(requested), n)
            slots, caps = budgets, None
        counts = _share(target, [max(b, 0) for b in slots], caps)[:len(chosen)]
    layers = {d.name: c for d, c in zip(chosen, counts, strict=True)}
    offloaded = sum(counts)
    plan = OffloadPlan(offloaded + 1 if offloaded else 0, n, None, main_gpu or 0, sizes.kv_bytes(n_ctx, offloaded),
                       layers, {d.name: d.label() for d in chosen})
    plan.tensor_split = _split_for(plan.layers_per_device)
    return plan


def _order(chosen: list[Device], explicit: bool) -> list[Device]:
    """llama.cpp's default order: RPC workers first (the output head stays local), then GPUs, then iGPUs only
    when there is no discrete GPU. An explicit --gpus list keeps its order."""
    if explicit:
        return chosen
    rpc = [d for d in chosen if d.is_rpc]
    gpu = [d for d in chosen if d.type == "gpu" and not d.is_rpc]
    igpu = [d for d in chosen if d.type == "igpu"]
    return rpc + gpu + (igpu if not gpu else [])


def _budget(device: Device) -> int:
    return device.free - max(MARGIN_BYTES, int(device.total * MARGIN_FRACTION))


def _share(target: int, weights: list[float], caps: list[int] | None) -> list[int]:
    """`target` layers in proportion to `weights` (largest remainders), none above its cap when caps allow."""
    counts = [0] * len(weights)
    open_ = [i for i, w in enumerate(weights) if w > 0 and (caps is None or caps[i] > 0)]
    left = target
    while left > 0 and open_:
        total = sum(weights[i] for i in open_)
        exact = {i: left * weights[i] / total for i in open_}
        give = {i: int(exact[i]) for i in open_}
        for i in sorted(open_, key=lambda i: exact[i] - give[i], reverse=True)[:left - sum(give.values())]:
            give[i] += 1
        for i in open_:
            room = caps[i] - counts[i] if caps is not None else give[i]
            counts[i] += min(give[i], room)
        left = target - sum(counts)
        open_ = [i for i in open_ if caps is None or counts[i] < caps[i]]
        if caps is None:
            break
    return counts


def _split_for(layers: dict[str, int]) -> list[float] | None:
    """llama.cpp's tensor_split over the devices that got layers: their layer counts, the last one + 1 for the
    output head (llama.cpp splits layers n_layers - offloaded .. n_layers by these cumulative proportions)."""
    counts = [float(n) for n in layers.values() if n]
    if not counts:
        return None
    counts[-1] += 1
    return counts


def _rescale(counts: dict[str, int], target: int) -> dict[str, int]:
    names = list(counts)
    return dict(zip(names, _share(target, [float(counts[k]) for k in names], None), strict=True))


def parse_tensor_split(text: str | None) -> list[float] | None:
    """--tensor-split "3,1" (llama-server's format: proportions per device, `,` or `/` between them)."""
    if not text:
        return None
    try:
        return [float(x) for x in re.split(r"[,/]", text) if x.strip()]
    except ValueError:
        raise EngineError(f"--tensor-split {text!r}: expected proportions separated by commas, like 3,1") from None


def _no_device_note(gpus: str | None) -> str:
    from lcpp_zh.runtime.ggml_api import backend_names

    if gpus:
        return ""
    if not [b for b in backend_names() if b not in ("CPU", "RPC", "BLAS")]:
        return ("no GPU backend in this llama-cpp-python: running on the CPU (reinstall with `make install "
                "GPU=cuda` or metal, vulkan, hip; or add RPC workers with --rpc)")
    return "no GPU found: running on the CPU"


def plan_for(model_path: Path, n_ctx: int, requested: str | int, gpus: str | None, main_gpu: int | None,
             tensor_split: Sequence[float] | None = None, rpc: Sequence[str] = (),
             cache_types: tuple[str, str] = ("f16", "f16")) -> OffloadPlan:
    """The plan on this machine and its workers (probed, not registered: the runner registers them)."""
    from lcpp_zh.runtime.devices import plannable_devices

    sizes = read_model_sizes(model_path, cache_types)
    if requested in (0, "0"):
        return OffloadPlan(0, sizes.n_layers, note="running on the CPU (--gpu-layers 0)")
    devices = plannable_devices(rpc)
    if not gpus and not any(d.offloads for d in devices):
        return OffloadPlan(0, sizes.n_layers, note=_no_device_note(gpus))
    plan = plan_offload(sizes, devices, n_ctx, requested=requested, gpus=gpus, tensor_split=tensor_split,
                        main_gpu=main_gpu)
    plan.rpc = list(rpc)
    return plan


T = TypeVar("T")


def load_with_fallback(load: Callable[[OffloadPlan], T], plan: OffloadPlan,
                       report: Callable[[str], None] = logger.warning) -> tuple[T, OffloadPlan]:
    """Call `load(plan)`; when loading fails with layers offloaded (out of memory), retry with a quarter
    fewer layers each time, down to the CPU. A failure on the CPU is raised as is."""
    while True:
        try:
            return load(plan), plan
        except (ModelError, EngineError) as exc:
            if plan.n_gpu_layers <= 0:
                raise
            fewer = plan.offloaded * 3 // 4
            report(f"loading with {plan.offloaded} layers offloaded failed ({exc}); retrying with {fewer}")
            counts = _rescale(plan.layers_per_device, fewer) if fewer else {}
            plan = OffloadPlan(fewer + 1 if fewer else 0, plan.n_layers, _split_for(counts), plan.main_gpu,
                               plan.kv_bytes * fewer // max(plan.offloaded, 1), counts, plan.labels,
                               note="" if fewer else "out of device memory: running on the CPU", rpc=plan.rpc)


__all__ = ["ModelSizes", "OffloadPlan", "read_model_sizes", "plan_offload", "plan_for", "load_with_fallback",
           "parse_tensor_split"]
