"""The devices llama.cpp can run on, as ggml's backend registry lists them (CPU, CUDA, Metal, Vulkan, ROCm,
SYCL, RPC workers alike), with free and total memory; and the choice of devices by --gpus.

`list_devices` enumerates through ggml in this process. `plannable_devices` adds RPC workers from the Python
probe without connecting llama.cpp to them, so that the process that plans leaves the workers (which serve
one client at a time) free for the runner that computes. Planning is in lcpp_zh.runtime.offload.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from lcpp_zh.errors import EngineError
from lcpp_zh.runtime import ggml_api

logger = logging.getLogger(__name__)

GiB = 1 << 30


@dataclass(frozen=True)
class Device:
    """One ggml backend device. `handle` is the process-local ggml_backend_dev_t (None for a worker seen only
    by the probe); `name` (CUDA0, Metal, Vulkan0, RPC1, CPU) is what crosses processes."""

    index: int
    name: str
    description: str
    backend: str            # the registry's name: CPU, CUDA, Metal, Vulkan, ROCm, SYCL, RPC, ...
    type: str               # cpu, gpu, igpu, accel
    free: int
    total: int
    handle: int | None = field(default=None, compare=False)

    @property
    def is_rpc(self) -> bool:
        return self.backend.startswith("RPC")

    @property
    def offloads(self) -> bool:
        """Whether llama.cpp offloads layers to it (the CPU takes the rest; ACCEL ones, BLAS say, help the CPU)."""
        return self.type in ("gpu", "igpu")

    @property
    def unified_memory(self) -> bool:
        """An iGPU or Apple's Metal: its memory is the CPU's memory (the planner gives the CPU no share then)."""
        return self.type == "igpu" or self.backend == "Metal"

    def label(self) -> str:
        """`RPC0 127.0.0.1:50052 (free 11.2 GiB)` or `CUDA0 (free 22.1 GiB)`, for the plan line."""
        where = f" {self.description}" if self.is_rpc else ""
        return f"{self.name}{where} (free {self.free / GiB:.1f} GiB)"

    def as_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "description": self.description, "backend": self.backend,
                "type": self.type, "free": self.free, "total": self.total}


def list_devices() -> list[Device]:
    """Every device registered in this process, in ggml's order."""
    from lcpp_zh.runtime.llama_api import init_backend

    init_backend()
    ggml_api.ensure_backends()
    lib = ggml_api.ggml()
    devices = []
    for i in range(lib.ggml_backend_dev_count()):
        handle = lib.ggml_backend_dev_get(i)
        free, total = ggml_api.dev_memory(handle)
        kind = ggml_api.DEV_TYPE_NAMES.get(lib.ggml_backend_dev_type(handle), "accel")
        devices.append(Device(i, ggml_api.dev_name(handle), ggml_api.dev_description(handle),
                              ggml_api.dev_reg_name(handle), kind, free, total, handle))
    return devices


def add_rpc_servers(endpoints: Sequence[str]) -> list[Device]:
    """Probe and register the workers in this process; their devices, as the registry now lists them."""
    from lcpp_zh.runtime.rpc import register_workers

    register_workers(list(endpoints))
    return [d for d in list_devices() if d.is_rpc]


def plannable_devices(endpoints: Sequence[str]) -> list[Device]:
    """This process's devices, plus the workers' devices named as llama.cpp will name them once a process
    registers the workers in this order (RPC0, RPC1, ... over the endpoints' devices, type gpu)."""
    from lcpp_zh.runtime.rpc import probe_worker

    devices = [d for d in list_devices() if not d.is_rpc]
    n_rpc = 0
    for endpoint in endpoints:
        for free, total in probe_worker(endpoint).memory:
            devices.append(Device(len(devices), f"RPC{n_rpc}", endpoint, "RPC", "gpu", free, total))
            n_rpc += 1
    return devices


def resolve_devices(names: Sequence[str]) -> list[int]:
    """ggml handles of the named devices in this process (after the workers are registered)."""
    lib = ggml_api.ggml()
    handles = []
    for name in names:
        handle = lib.ggml_backend_dev_by_name(name.encode())
        if not handle:
            raise EngineError(f"device {name} is not available in this process")
        handles.append(handle)
    return handles


def select_devices(devices: Sequence[Device], spec: str | None) -> list[Device]:
    """--gpus "0,1" or "CUDA0,RPC1": the devices by index or name; every offloading device when None."""
    if not spec:
        return [d for d in devices if d.offloads]
    chosen = []
    for item in (part.strip() for part in spec.split(",") if part.strip()):
        match = [d for d in devices if (item.isdigit() and d.index == int(item)) or d.name.lower() == item.lower()]
        if not match:
            known = ", ".join(f"{d.index}={d.name}" for d in devices)
            raise EngineError(f"--gpus {spec!r}: no device {item!r} (devices: {known}; see `lcpp-zh devices`)")
        if match[0] not in chosen:
            chosen.append(match[0])
    return chosen


__all__ = ["Device", "list_devices", "add_rpc_servers", "plannable_devices", "resolve_devices", "select_devices"]
