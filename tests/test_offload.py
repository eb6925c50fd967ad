"""GPU offload planning against simulated GPUs (no GPU here), the sizes read from a real GGUF, the CPU-only
build detection and the out-of-memory retry loop."""

from __future__ import annotations

import gguf
import pytest

from lcpp_zh.errors import EngineError, ModelError
from lcpp_zh.runtime.offload import (
    MARGIN_BYTES,
    GiB,
    GpuInfo,
    MiB,
    ModelSizes,
    OffloadPlan,
    gpu_offload_supported,
    load_with_fallback,
    parse_gpu_list,
    plan_for,
    plan_offload,
    read_model_sizes,
)

# A Llama-2-7B-like Q4_K_M: 32 layers of ~120 MiB, a 200 MiB output head, 512 KiB of f16 KV per token.
LLAMA7B = ModelSizes(layer_bytes=(120 * MiB,) * 32, output_bytes=200 * MiB, kv_bytes_per_token_layer=16 * 1024)
CTX = 4096  # KV per layer: 64 MiB -> 184 MiB per layer with its weights


def _gpu(index: int, free_gib: float, total_gib: float = 24) -> GpuInfo:
    return GpuInfo(index, f"sim{index}", int(free_gib * GiB), int(total_gib * GiB))


def test_everything_fits_on_a_big_gpu():
    plan = plan_offload(LLAMA7B, [_gpu(0, 22)], CTX)
    assert plan.n_gpu_layers == 33  # all 32 layers and the output head
    assert plan.layers_per_gpu == {0: 32} and plan.tensor_split is None
    assert plan.kv_bytes == 32 * 64 * MiB
    assert plan.describe() == "32/32 layers on GPU 0, KV 2.0 GiB"


def test_partial_offload_counts_layers_that_fit():
    free = 4 * GiB
    plan = plan_offload(LLAMA7B, [GpuInfo(0, "sim", free, 8 * GiB)], CTX)
    budget = free - MARGIN_BYTES - LLAMA7B.output_bytes
    assert plan.n_gpu_layers == budget // (184 * MiB)
    assert plan.describe().startswith(f"{plan.n_gpu_layers}/32 layers on GPU 0, KV ")


def test_kv_cache_for_a_longer_context_leaves_fewer_layers():
    short = plan_offload(LLAMA7B, [_gpu(0, 5)], 2048).n_gpu_layers
    long = plan_offload(LLAMA7B, [_gpu(0, 5)], 16384).n_gpu_layers
    assert long < short


def test_two_gpus_split_by_free_memory():
    plan = plan_offload(LLAMA7B, [_gpu(0, 2.5), _gpu(1, 5)], CTX)
    counts = plan.layers_per_gpu
    assert counts[1] > counts[0] > 0
    assert sum(counts.values()) == plan.n_gpu_layers < 32  # 7.5 GiB in all cannot hold the whole model
    assert plan.tensor_split == pytest.approx([counts[0] / sum(counts.values()), counts[1] / sum(counts.values())])
    assert "GPU 0" in plan.describe() and "GPU 1" in plan.describe()


def test_gpus_flag_selects_devices():
    plan = plan_offload(LLAMA7B, [_gpu(0, 22), _gpu(1, 22)], CTX, use_gpus=[1])
    assert plan.layers_per_gpu == {1: 32}
    assert plan.tensor_split == [0.0, 1.0]  # GPU 0 gets nothing
    assert plan.main_gpu == 1
    assert parse_gpu_list("0,1") == [0, 1]
    with pytest.raises(EngineError):
        parse_gpu_list("zero")


def test_explicit_layer_count_and_all():
    assert plan_offload(LLAMA7B, [_gpu(0, 2)], CTX, requested=10).n_gpu_layers == 10
    assert plan_offload(LLAMA7B, [_gpu(0, 2)], CTX, requested="all").n_gpu_layers == 33
    assert plan_offload(LLAMA7B, [_gpu(0, 22)], CTX, requested=0).n_gpu_layers == 0


def test_no_gpu_means_cpu():
    plan = plan_offload(LLAMA7B, [], CTX)
    assert plan.n_gpu_layers == 0 and "CPU" in plan.describe()


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


def test_cpu_only_build_says_so_in_one_line(smollm2_gguf):
    if gpu_offload_supported():
        pytest.skip("this llama-cpp-python is built with GPU support")
    plan = plan_for(smollm2_gguf, 2048, "auto", None, None)
    assert plan.n_gpu_layers == 0
    assert "built without GPU support" in plan.describe() and "\n" not in plan.describe()


def test_out_of_memory_retries_with_fewer_layers():
    tried: list[int] = []

    def load(plan: OffloadPlan) -> str:
        tried.append(plan.n_gpu_layers)
        if plan.n_gpu_layers > 12:
            raise EngineError("llama.cpp could not create a context (out of memory?)")
        return "engine"

    start = plan_offload(LLAMA7B, [_gpu(0, 22)], CTX)
    engine, final = load_with_fallback(load, start, report=lambda _msg: None)
    assert engine == "engine" and final.n_gpu_layers <= 12
    assert tried[0] == 33 and tried == sorted(tried, reverse=True) and len(set(tried)) == len(tried)


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

    result, final = load_with_fallback(load, plan_offload(LLAMA7B, [_gpu(0, 22)], CTX), report=lambda _m: None)
    assert final.n_gpu_layers == 0 and "CPU" in final.describe()
