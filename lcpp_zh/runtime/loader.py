"""From command-line settings to a running Engine: resolve the model, plan GPU offload, load with fallback.

Shared by chat, generate and serve so that MODEL, --gpu-layers, --gpus, --ctx and --threads mean the same
everywhere. Reports (the offload plan, a conversion starting) go through a callback; nothing is printed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lcpp_zh.errors import EngineError

logger = logging.getLogger(__name__)


@dataclass
class RuntimeOptions:
    model: str
    quant: str | None = None
    infer_dtype: str | None = None
    template: str | None = None
    n_ctx: int = 4096
    n_parallel: int = 1
    n_threads: int | None = None
    n_batch: int = 512
    gpu_layers: str = "auto"
    gpus: str | None = None
    main_gpu: int | None = None
    rpc: str | None = None            # --rpc HOST:PORT[,HOST:PORT]
    tensor_split: str | None = None   # --tensor-split 3,1
    loras: Sequence[str] = field(default_factory=tuple)
    verbose: bool = False


def parse_gpu_layers(text: str | int) -> str | int:
    """--gpu-layers auto|all|N."""
    value = str(text).strip().lower()
    if value in ("auto", "all"):
        return value
    if value.isdigit():
        return int(value)
    raise EngineError(f"--gpu-layers {text!r}: expected auto, all or a number of layers")


def open_engine(opts: RuntimeOptions, *, report: Callable[[str], None] = logger.warning,
                progress: Callable | None = None):
    """Resolve opts.model to a GGUF, plan the offload, report the plan and load the engine. With RPC workers
    the engine runs in a runner process (a RunnerClient): llama.cpp aborts the process that computes when a
    worker goes away, and that must not be the chat's own."""
    from lcpp_zh.resolve import resolve_model
    from lcpp_zh.runtime.devices import resolve_devices
    from lcpp_zh.runtime.engine import Engine
    from lcpp_zh.runtime.offload import load_with_fallback, parse_tensor_split, plan_for
    from lcpp_zh.runtime.rpc import parse_endpoints

    if opts.n_ctx < 16 * max(opts.n_parallel, 1):
        raise EngineError(f"--ctx {opts.n_ctx} is too small; use at least {16 * max(opts.n_parallel, 1)}")
    requested = parse_gpu_layers(opts.gpu_layers)
    endpoints = parse_endpoints(opts.rpc)
    split = parse_tensor_split(opts.tensor_split)
    if endpoints:
        from lcpp_zh.runtime.ggml_api import ggml_rpc

        ggml_rpc()  # one line to reinstall before anything else happens, on a build without RPC
    path: Path = resolve_model(opts.model, opts.quant, infer_dtype=opts.infer_dtype, template=opts.template,
                               progress=progress)
    from lcpp_zh.runtime.llama_api import check_gguf_file

    check_gguf_file(path)
    plan = plan_for(path, opts.n_ctx, requested, opts.gpus, opts.main_gpu, split, endpoints)
    report(plan.describe())
    if endpoints:
        return _open_runner(path, opts, plan), plan

    def load(p):
        return Engine(path, n_ctx=opts.n_ctx, n_parallel=opts.n_parallel, n_threads=opts.n_threads,
                      n_batch=opts.n_batch, gpu_layers=p.n_gpu_layers, main_gpu=p.main_gpu,
                      tensor_split=p.tensor_split, loras=tuple(opts.loras), verbose=opts.verbose,
                      devices=resolve_devices(p.devices) or None)

    engine, plan = load_with_fallback(load, plan, report)
    return engine, plan


def _open_runner(path: Path, opts: RuntimeOptions, plan):
    """The engine in a supervised runner process, which registers the workers itself (per process)."""
    from dataclasses import asdict

    from lcpp_zh.runtime.runner_client import RunnerClient
    from lcpp_zh.runtime.runner_protocol import RunnerConfig

    config = RunnerConfig(model_path=str(path), n_ctx=opts.n_ctx, n_parallel=opts.n_parallel,
                          n_threads=opts.n_threads, n_batch=opts.n_batch, embeddings=False,
                          loras=[(str(p), float(s)) for p, s in _pairs(opts.loras)], plan=asdict(plan),
                          log_level=logging.getLogger().getEffectiveLevel())
    return RunnerClient(config, alias=path.name)


def _pairs(loras: Sequence) -> list[tuple[str, float]]:
    return [(item, 1.0) if isinstance(item, str | Path) else (item[0], item[1]) for item in loras]
