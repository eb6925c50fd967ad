"""Offload planning over simulated device lists for every backend type (CUDA x2, Metal, Vulkan iGPU, ROCm, SYCL,
RPC workers; no GPU here), the sizes read from a real GGUF, and the out-of-memory retry loop. The split a plan
asks for is checked against llama.cpp's own layer assignment rule (llama-model.cpp, load_tensors)."""

from __future__ import annotations

import bisect

import gguf
import pytest

from lcpp_zh.errors import EngineError, ModelError
from lcpp_zh.runtime.devices import Device, select_devices
from lcpp_zh.runtime.offload import (
    MARGIN_BYTES,
    GiB,
    MiB,
    ModelSizes,
    OffloadPlan,
    load_with_fallback,
    parse_tensor_split,
    plan_for,
    plan_offload,
    read_model_sizes,
)

# A Llama-2-7B-like Q4_K_M: 32 layers of ~120 MiB, a 200 MiB output head, 512 KiB of f16 KV per token.
LLAMA7B = ModelSizes(layer_bytes=(120 * MiB,) * 32, output_bytes=200 * MiB, kv_bytes_per_token_layer=16 * 1024)
CTX = 4096  # KV per layer: 64 MiB -> 184 MiB per layer with its weights
CPU = Device(0, "CPU", "Intel(R) Xeon(R)", "CPU", "cpu", 60 * GiB, 64 * GiB)


def _dev(index: int, name: str, backend: str, free_gib: float, total_gib: float = 24, kind: str = "gpu",
         description: str = "") -> Device:
    return Device(index, name, description or f"sim {name}", backend, kind, int(free_gib * GiB), int(total_gib * GiB))


def cuda(i: int, free: float, total: float = 24) -> Device:
    return _dev(i, f"CUDA{i}", "CUDA", free, total)


def rpc(i: int, index: int, free: float, port: int) -> Device:
    return _dev(index, f"RPC{i}", "RPC", free, 32, description=f"10.0.0.{i + 2}:{port}")


def llama_cpp_assignment(plan: OffloadPlan) -> dict[str, int]:
    """Repeating layers per device as llama.cpp assigns them from n_gpu_layers and tensor_split."""
    n, ngl = plan.n_layers, plan.n_gpu_layers
    names = plan.devices
    cum, total = [], 0.0
    for x in plan.tensor_split:
        total += x
        cum.append(total)
    splits = [c / total for c in cum]
    start = max(n + 1 - ngl, 0)
    out = {name: 0 for name in names}
    out["CPU"] = start
    for il in range(start, n):
        out[names[bisect.bisect_right(splits, (il - start) / ngl)]] += 1
    return out


def test_everything_fits_on_a_big_gpu():
    plan = plan_offload(LLAMA7B, [cuda(0, 22), CPU], CTX)
    assert plan.n_gpu_layers == 33  # all 32 layers and the output head
    assert plan.layers_per_device == {"CUDA0": 32} and plan.devices == ["CUDA0"]
    assert plan.kv_bytes == 32 * 64 * MiB
    assert plan.describe() == "32/32 layers offloaded: 32 on CUDA0 (free 22.0 GiB); KV 2.0 GiB"


def test_partial_offload_counts_layers_that_fit_and_the_cpu_takes_the_rest():
    free = 4 * GiB
    plan = plan_offload(LLAMA7B, [Device(0, "CUDA0", "sim", "CUDA", "gpu", free, 8 * GiB), CPU], CTX)
    budget = free - MARGIN_BYTES - LLAMA7B.output_bytes
    assert plan.offloaded == budget // (184 * MiB) and plan.n_gpu_layers == plan.offloaded + 1
    assert plan.describe().startswith(f"{plan.offloaded}/32 layers offloaded: {plan.offloaded} on CUDA0")
    assert f"{32 - plan.offloaded} on CPU" in plan.describe()
    assert llama_cpp_assignment(plan) == {"CUDA0": plan.offloaded, "CPU": 32 - plan.offloaded}


def test_kv_cache_for_a_longer_context_leaves_fewer_layers():
    short = plan_offload(LLAMA7B, [cuda(0, 5)], 2048).offloaded
    long = plan_offload(LLAMA7B, [cuda(0, 5)], 16384).offloaded
    assert long < short


def test_two_cuda_gpus_split_by_free_memory():
    plan = plan_offload(LLAMA7B, [cuda(0, 2.5), cuda(1, 5), CPU], CTX)
    counts = plan.layers_per_device
    assert counts["CUDA1"] > counts["CUDA0"] > 0
    assert plan.offloaded < 32  # 7.5 GiB in all cannot hold the whole model
    assert llama_cpp_assignment(plan) == {**counts, "CPU": 32 - plan.offloaded}
    assert "CUDA0" in plan.describe() and "CUDA1" in plan.describe()


def test_two_big_gpus_share_the_model_in_proportion():
    plan = plan_offload(LLAMA7B, [cuda(0, 10, 12), cuda(1, 20, 24), CPU], CTX)
    assert plan.offloaded == 32 and plan.n_gpu_layers == 33
    assert plan.layers_per_device["CUDA1"] > plan.layers_per_device["CUDA0"] > 8
    assert llama_cpp_assignment(plan) == {**plan.layers_per_device, "CPU": 0}


def test_gpus_flag_selects_devices_by_index_or_name():
    devices = [cuda(0, 22), cuda(1, 22), CPU]
    for spec in ("1", "CUDA1", "cuda1"):
        plan = plan_offload(LLAMA7B, devices, CTX, gpus=spec)
        assert plan.layers_per_device == {"CUDA1": 32} and plan.devices == ["CUDA1"]
    with pytest.raises(EngineError, match="no device 'CUDA7'"):
        select_devices(devices, "CUDA7")


def test_explicit_layer_count_and_all():
    assert plan_offload(LLAMA7B, [cuda(0, 2)], CTX, requested=10).offloaded == 10
    assert plan_offload(LLAMA7B, [cuda(0, 2)], CTX, requested="all").n_gpu_layers == 33
    assert plan_offload(LLAMA7B, [cuda(0, 22)], CTX, requested=0).n_gpu_layers == 0


def test_tensor_split_override_is_obeyed():
    plan = plan_offload(LLAMA7B, [cuda(0, 22), cuda(1, 22), CPU], CTX, tensor_split=parse_tensor_split("3,1"))
    assert plan.layers_per_device == {"CUDA0": 24, "CUDA1": 8}
    assert llama_cpp_assignment(plan) == {"CUDA0": 24, "CUDA1": 8, "CPU": 0}
    with pytest.raises(EngineError, match="one per device"):
        plan_offload(LLAMA7B, [cuda(0, 22), cuda(1, 22)], CTX, tensor_split=[1.0])
    with pytest.raises(EngineError):
        parse_tensor_split("three,one")


def test_no_gpu_means_cpu():
    plan = plan_offload(LLAMA7B, [CPU], CTX)
    assert plan.n_gpu_layers == 0 and "CPU" in plan.describe()


def test_metal_unified_memory_does_not_make_the_cpu_a_peer():
    metal = _dev(0, "Metal", "Metal", 21, 21, description="Apple M2 Max")
    for gpus in (None, "Metal,CPU"):  # even with the CPU chosen: its RAM is the memory Metal reported
        plan = plan_offload(LLAMA7B, [metal, CPU], CTX, gpus=gpus)
        assert metal.unified_memory and plan.layers_per_device == {"Metal": 32}, gpus
        assert llama_cpp_assignment(plan)["CPU"] == 0
    # A discrete GPU chosen with the CPU shares the layers with it by free memory.
    split = plan_offload(LLAMA7B, [cuda(0, 21, 24), CPU], CTX, gpus="CUDA0,CPU")
    assert 0 < split.layers_per_device["CUDA0"] < 32


def test_vulkan_igpu_is_used_only_without_a_discrete_gpu():
    igpu = _dev(1, "Vulkan1", "Vulkan", 6, 16, kind="igpu", description="AMD Radeon 780M")
    dgpu = _dev(0, "Vulkan0", "Vulkan", 7.5, 8, description="NVIDIA RTX 4060")
    assert set(plan_offload(LLAMA7B, [dgpu, igpu, CPU], CTX).layers_per_device) == {"Vulkan0"}
    alone = plan_offload(LLAMA7B, [igpu, CPU], CTX)
    assert alone.devices == ["Vulkan1"] and 0 < alone.offloaded < 32
    # Its memory is the CPU's: chosen together, the CPU takes no share of its own.
    assert plan_offload(LLAMA7B, [igpu, CPU], CTX, gpus="Vulkan1,CPU").offloaded == alone.offloaded


@pytest.mark.parametrize("backend,name", [("ROCm", "ROCm0"), ("SYCL", "SYCL0"), ("CUDA", "CUDA0"),
                                          ("Vulkan", "Vulkan0")])
def test_every_gpu_backend_plans_the_same_way(backend, name):
    plan = plan_offload(LLAMA7B, [_dev(0, name, backend, 6, 16), CPU], CTX)
    assert plan.devices == [name] and 0 < plan.offloaded < 32 and name in plan.describe()


def test_rpc_workers_and_the_local_cpu_share_by_free_memory():
    cpu = Device(0, "CPU", "x", "CPU", "cpu", int(11.2 * GiB), 32 * GiB)
    devices = [cpu, rpc(0, 1, 11.2, 50052), rpc(1, 2, 11.2, 50052)]
    small = ModelSizes((100 * MiB,) * 30, 100 * MiB, 1024)
    plan = plan_offload(small, devices, 2048)
    assert plan.layers_per_device == {"RPC0": 10, "RPC1": 10}
    assert plan.describe().startswith("20/30 layers offloaded: 10 on RPC0 10.0.0.2:50052 (free 11.2 GiB), "
                                      "10 on RPC1 10.0.0.3:50052 (free 11.2 GiB), 10 on CPU; KV ")
    assert llama_cpp_assignment(plan) == {"RPC0": 10, "RPC1": 10, "CPU": 10}
    everything = plan_offload(small, devices, 2048, requested="all")
    assert everything.offloaded == 30 and everything.n_gpu_layers == 31  # --gpu-layers all: none on the CPU


def test_rpc_first_then_local_gpus_and_the_cpu_only_takes_the_rest():
    devices = [cuda(0, 3), CPU, rpc(0, 2, 3, 50052)]
    plan = plan_offload(LLAMA7B, devices, CTX)
    assert list(plan.layers_per_device) == ["RPC0", "CUDA0"]  # the output head stays on the local GPU
    assert all(n > 0 for n in plan.layers_per_device.values()) and plan.offloaded < 32
    assert llama_cpp_assignment(plan) == {**plan.layers_per_device, "CPU": 32 - plan.offloaded}


def test_gpus_can_name_the_cpu_as_a_peer_of_a_worker():
    devices = [CPU, rpc(0, 1, 60, 50052)]
    plan = plan_offload(ModelSizes((100 * MiB,) * 30, 100 * MiB, 1024), devices, 2048, gpus="RPC0,CPU")
    assert 10 < plan.layers_per_device["RPC0"] < 20


def test_sizes_from_a_real_gguf(smollm2_gguf):
    sizes = read_model_sizes(smollm2_gguf)
    reader = gguf.GGUFReader(str(smollm2_gguf))
    assert sizes.n_layers == int(reader.fields["llama.block_count"].contents()) == 30
    per_layer = sum(int(t.n_bytes) for t in reader.tensors if t.name.startswith("blk.0."))
    assert sizes.layer_bytes[0] == per_layer
    # SmolLM2 ties its embeddings: the head llama.cpp offloads is a copy of token_embd.
    embd = next(int(t.n_bytes) for t in reader.tensors if t.name == "token_embd.weight")
    assert sizes.output_bytes >= embd
    # 3 KV heads x 64 dims, K and V, 2 bytes each.
    assert sizes.kv_bytes_per_token_layer == 2 * 3 * 64 * 2


def test_this_machine_without_gpu_says_so_in_one_line(smollm2_gguf):
    from lcpp_zh.runtime.devices import list_devices

    if any(d.offloads for d in list_devices()):
        pytest.skip("this machine has a GPU")
    plan = plan_for(smollm2_gguf, 2048, "auto", None, None)
    assert plan.n_gpu_layers == 0
    assert "running on the CPU" in plan.describe() and "\n" not in plan.describe()


def test_out_of_memory_retries_with_fewer_layers():
    tried: list[int] = []

    def load(plan: OffloadPlan) -> str:
        tried.append(plan.offloaded)
        if plan.offloaded > 12:
            raise EngineError("llama.cpp could not create a context (out of memory?)")
        return "engine"

    start = plan_offload(LLAMA7B, [cuda(0, 10, 12), cuda(1, 20, 24)], CTX)
    engine, final = load_with_fallback(load, start, report=lambda _msg: None)
    assert engine == "engine" and final.offloaded <= 12 and final.n_gpu_layers == final.offloaded + 1
    assert tried[0] == 32 and tried == sorted(tried, reverse=True) and len(set(tried)) == len(tried)
    assert llama_cpp_assignment(final) == {**final.layers_per_device, "CPU": 32 - final.offloaded}


def test_failure_on_the_cpu_is_not_retried():
    def load(plan: OffloadPlan) -> str:
        raise ModelError("corrupt")

    with pytest.raises(ModelError):
        load_with_fallback(load, OffloadPlan(0, 32), report=lambda _msg: None)


def test_out_of_memory_all_the_way_down_to_cpu():
    def load(plan: OffloadPlan) -> OffloadPlan:
        if plan.n_gpu_layers > 0:
            raise ModelError("cudaMalloc failed: out of memory")
        return plan

    result, final = load_with_fallback(load, plan_offload(LLAMA7B, [cuda(0, 22)], CTX), report=lambda _m: None)
    assert final.n_gpu_layers == 0 and "CPU" in final.describe()
