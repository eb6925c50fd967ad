"""GPU checks (`pytest -m gpu`, run by scripts/gpu-check.sh against a CUDA build of llama.cpp): ggml lists the
GPU with its memory, the planner puts every layer of SmolLM2 on it, and full offload answers with the CPU's
greedy text. Every test skips, with the reason, where ggml's device list has no GPU.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

PROMPT = "The capital of France is Paris. The capital of Japan is"
GiB = 1 << 30


@pytest.fixture(scope="module")
def gpus():
    """The GPUs in ggml's device list (lcpp_zh.runtime.devices); skips the module's tests when there is none."""
    try:
        from lcpp_zh.runtime.devices import list_devices
    except ImportError as exc:
        pytest.skip(f"lcpp_zh.runtime.devices is not available ({exc})")
    found = [d for d in list_devices() if d.offloads and not d.is_rpc]
    if not found:
        pytest.skip("no GPU in ggml's device list (a CPU-only llama.cpp build, or no GPU here)")
    return found


def _generate(model: Path, gpu_layers: str) -> tuple[dict, str]:
    exe = Path(sys.executable).parent / "lcpp-zh"
    done = subprocess.run([str(exe), "generate", str(model), PROMPT, "--raw", "--json", "--max-new-tokens", "16",
                           "--temperature", "0", "--repeat-penalty", "1", "--gpu-layers", gpu_layers],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def test_device_list_shows_gpu_with_memory(gpus):
    for gpu in gpus:
        assert gpu.total > 0 and 0 < gpu.free <= gpu.total, gpu
        assert gpu.backend in ("CUDA", "ROCm", "Vulkan", "Metal", "SYCL", "MUSA"), gpu
    smi = shutil.which("nvidia-smi")
    cuda = [g for g in gpus if g.backend == "CUDA"]
    if smi and cuda:
        # nvidia-smi, an independent reading: the same cards with the same total memory (MiB).
        out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, check=True).stdout
        rows = [line.rsplit(",", 1) for line in out.strip().splitlines()]
        assert len(rows) == len(cuda)
        for gpu, (name, total_mib) in zip(cuda, rows, strict=True):
            assert name.strip() in gpu.description, (gpu.description, name)
            assert abs(gpu.total / (1 << 20) - int(total_mib)) <= 0.02 * int(total_mib)


def test_planner_offloads_every_layer(gpus, smollm2_gguf):
    from lcpp_zh.runtime.offload import plan_for, read_model_sizes

    n_layers = read_model_sizes(smollm2_gguf).n_layers
    for requested in ("auto", "all"):
        plan = plan_for(smollm2_gguf, 2048, requested, None, None)
        assert plan.offloaded == n_layers == plan.n_layers, plan.describe()
        assert plan.n_gpu_layers == n_layers + 1  # and the output head
        assert set(plan.devices) <= {g.name for g in gpus}, plan.devices


def test_full_offload_same_greedy_text_as_cpu(gpus, smollm2_gguf):
    on_cpu, _ = _generate(smollm2_gguf, "0")
    on_gpu, log = _generate(smollm2_gguf, "all")
    offloaded = re.search(r"(\d+)/(\d+) layers offloaded", on_gpu["offload"])
    assert offloaded and offloaded[1] == offloaded[2], f"not fully offloaded: {on_gpu['offload']}; {log[-2000:]}"
    assert on_gpu["completion_tokens"] == on_cpu["completion_tokens"] == 16
    assert on_gpu["text"] == on_cpu["text"]
