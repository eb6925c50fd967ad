"""From a ModelChoice and EngineSettings to a running Engine: resolve the model, plan GPU offload, load with
fallback.

Shared by chat, generate and serve (lcpp_zh.server.model_loader) so that MODEL, --gpu-layers, --gpus, --ctx
and --threads mean the same everywhere. Reports (the offload plan, a conversion starting) go through a
callback; nothing is printed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lcpp_zh.errors import EngineError
from lcpp_zh.runtime.offload import OffloadPlan
from lcpp_zh.runtime.settings import EngineSettings, ModelChoice

logger = logging.getLogger(__name__)


def parse_gpu_layers(text: str | int) -> str | int:
    """--gpu-layers auto|all|N."""
    value = str(text).strip().lower()
    if value in ("auto", "all"):
        return value
    if value.isdigit():
        return int(value)
    raise EngineError(f"--gpu-layers {text!r}: expected auto, all or a number of layers")


def check_settings(settings: EngineSettings) -> None:
    """What can be checked before any model is resolved: the context against the slots, the offload flags."""
    least = 16 * max(settings.n_parallel, 1)
    if settings.n_ctx < least:
        raise EngineError(f"--ctx {settings.n_ctx} is too small for {settings.n_parallel} slot(s); "
                          f"use at least {least}")
    from lcpp_zh.runtime.offload import parse_tensor_split
    from lcpp_zh.runtime.rpc import parse_endpoints

    parse_gpu_layers(settings.gpu_layers)
    parse_tensor_split(settings.tensor_split)
    parse_endpoints(settings.rpc)


def prepare_model(choice: ModelChoice, settings: EngineSettings, *,
                  progress: Callable | None = None) -> tuple[Path, OffloadPlan]:
    """Check the settings, resolve choice.name to a checked GGUF (converting a checkpoint on first use) and
    plan its offload on this machine and the RPC workers. Loads nothing."""
    from lcpp_zh.resolve import resolve_model
    from lcpp_zh.runtime.llama_api import check_gguf_file
    from lcpp_zh.runtime.offload import parse_tensor_split, plan_for
    from lcpp_zh.runtime.rpc import parse_endpoints

    check_settings(settings)
    endpoints = parse_endpoints(settings.rpc)
    if endpoints:
        from lcpp_zh.runtime.ggml_api import ggml_rpc

        ggml_rpc()  # one line to reinstall before anything else happens, on a build without RPC
    path = resolve_model(choice.name, choice.quant, infer_dtype=choice.infer_dtype, template=choice.template,
                         progress=progress)
    check_gguf_file(path)
    plan = plan_for(path, settings.n_ctx, parse_gpu_layers(settings.gpu_layers), settings.gpus, settings.main_gpu,
                    parse_tensor_split(settings.tensor_split), endpoints,
                    cache_types=(settings.cache_type_k, settings.cache_type_v))
    return path, plan


def load_engine(path: str | Path, settings: EngineSettings, plan: OffloadPlan,
                report: Callable[[str], None] = logger.warning) -> tuple[Any, OffloadPlan]:
    """An in-process Engine, retried with fewer offloaded layers while loading runs out of device memory."""
    from lcpp_zh.runtime.engine import Engine
    from lcpp_zh.runtime.offload import load_with_fallback

    return load_with_fallback(lambda p: Engine(path, settings, plan=p), plan, report)


def start_runner(path: str | Path, settings: EngineSettings, plan: OffloadPlan, *, alias: str = "",
                 on_restart: Callable[[str], None] | None = None) -> Any:
    """The engine in a supervised runner process (a RunnerClient), which registers the RPC workers itself (per
    process) and does the plan's out-of-memory fallback there."""
    from lcpp_zh.runtime.runner_client import RunnerClient
    from lcpp_zh.runtime.runner_protocol import RunnerConfig

    config = RunnerConfig(model_path=str(path), settings=settings, plan=plan,
                          log_level=logging.getLogger().getEffectiveLevel())
    return RunnerClient(config, alias=alias or Path(path).name, on_restart=on_restart)


def open_engine(choice: ModelChoice, settings: EngineSettings, *, report: Callable[[str], None] = logger.warning,
                progress: Callable | None = None) -> tuple[Any, OffloadPlan]:
    """Resolve and plan (prepare_model), report the plan and load the engine. With RPC workers the engine runs
    in a runner process: llama.cpp aborts the process that computes when a worker goes away, and that must
    not be the chat's own."""
    from lcpp_zh.runtime.rpc import parse_endpoints

    path, plan = prepare_model(choice, settings, progress=progress)
    report(plan.describe())
    if parse_endpoints(settings.rpc):
        return start_runner(path, settings, plan), plan
    return load_engine(path, settings, plan, report)
