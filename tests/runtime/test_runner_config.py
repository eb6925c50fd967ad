"""The runner's start message: RunnerConfig goes through JSON and back unchanged (settings, offload plan, LoRA
pairs), and what the protocol does not know is dropped rather than passed to the Engine."""

from __future__ import annotations

import json
import logging

from lcpp_zh.runtime.offload import OffloadPlan
from lcpp_zh.runtime.runner_protocol import RunnerConfig
from lcpp_zh.runtime.settings import EngineSettings


def _through_json(config: RunnerConfig) -> RunnerConfig:
    return RunnerConfig.from_wire(json.loads(json.dumps(config.to_wire())))


def test_a_config_with_a_plan_and_adapters_survives_the_wire():
    settings = EngineSettings(n_ctx=2048, n_parallel=3, n_threads=2, n_batch=256, max_queue=5, embeddings=True,
                              rpc="127.0.0.1:50052", loras=(("/adapters/a.gguf", 0.5), ("/adapters/b.gguf", 1.0)))
    plan = OffloadPlan(11, 30, [4.0, 7.0], 0, 1 << 20, {"RPC0": 4, "CUDA0": 6}, {"RPC0": "RPC0 127.0.0.1:50052"},
                       rpc=["127.0.0.1:50052"])
    config = RunnerConfig("/models/m.gguf", settings, plan, log_level=logging.INFO)
    back = _through_json(config)
    assert back == config
    assert back.settings.loras == (("/adapters/a.gguf", 0.5), ("/adapters/b.gguf", 1.0))
    assert back.plan.devices == ["RPC0", "CUDA0"] and back.uses_rpc


def test_a_cpu_config_has_no_plan_and_uses_no_workers():
    back = _through_json(RunnerConfig("/models/m.gguf"))
    assert back.plan is None and not back.uses_rpc and back.settings == EngineSettings()


def test_unknown_settings_from_the_wire_are_dropped():
    wire = RunnerConfig("/m.gguf", EngineSettings(n_ctx=512)).to_wire()
    wire["settings"]["not_a_setting"] = 1
    assert RunnerConfig.from_wire(wire).settings == EngineSettings(n_ctx=512)
