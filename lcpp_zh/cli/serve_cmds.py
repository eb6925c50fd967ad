"""`lcpp-zh serve`: the HTTP server (OpenAI-compatible API, the seed's /generate, the web chat page).

This module only turns flags into engines; the server lives in lcpp_zh.server and the engine in
lcpp_zh.runtime.engine. Model options (--quant, --infer_dtype, --template, --ctx, --threads, --gpu-layers, --gpus, ...)
are the shared ones of `chat`; the seed's --model_path and --model_source work too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from lcpp_zh.cli.chat_cmds import model_options
from lcpp_zh.cli.lora_cmds import pair_loras
from lcpp_zh.errors import LcppError

logger = logging.getLogger(__name__)

# The seed's --model_source picks the chat format.
MODEL_SOURCE_TEMPLATE = {"llama2_chinese": "llama2-chinese", "llama2_meta": "llama2"}


@dataclass(frozen=True)
class ModelSpec:
    alias: str
    name: str


@dataclass(frozen=True)
class ServeSettings:
    """Engine settings shared by every served model."""

    n_ctx: int
    n_parallel: int
    n_threads: int | None
    n_batch: int
    max_queue: int
    gpu_layers: str
    gpus: str | None
    main_gpu: int | None
    rpc: str | None
    tensor_split: str | None
    loras: tuple[tuple[str, float], ...]  # (adapter path, scale)
    embeddings: bool
    quant: str | None
    infer_dtype: str | None
    template: Any  # a template name, a ChatTemplate (--template-file) or None for auto


def parse_model_specs(names: list[str]) -> list[ModelSpec]:
    """`ALIAS=MODEL` or `MODEL` (alias: the file name without .gguf, or the repo id's last part)."""
    specs = []
    for name in names:
        alias, sep, target = name.partition("=")
        if not sep or not alias or "/" in alias or Path(name).exists():
            target, alias = name, _default_alias(name)
        specs.append(ModelSpec(alias=alias.strip(), name=target.strip()))
    if not specs:
        raise LcppError("no model given: `lcpp-zh serve MODEL.gguf` (or --model_path PATH)")
    seen: set[str] = set()
    for spec in specs:
        if spec.alias in seen:
            raise LcppError(f"two models share the alias {spec.alias!r}: name them ALIAS=MODEL")
        seen.add(spec.alias)
    return specs


def _default_alias(name: str) -> str:
    base = Path(name.rstrip("/")).name
    return base[:-5] if base.lower().endswith(".gguf") else base


def load_model(spec: ModelSpec, settings: ServeSettings, on_restart: Any = None) -> Any:
    """Resolve one model (converting a checkpoint on first use), plan the GPU offload and start its runner.

    The engine runs in a runner process (lcpp_zh.runtime.runner) that the server supervises; the plan's
    out-of-memory fallback happens there, as lcpp_zh.runtime.loader does it in-process for chat.
    """
    from dataclasses import asdict

    from lcpp_zh.resolve import resolve_model
    from lcpp_zh.runtime.llama_api import check_gguf_file
    from lcpp_zh.runtime.loader import parse_gpu_layers
    from lcpp_zh.runtime.offload import parse_tensor_split, plan_for
    from lcpp_zh.runtime.rpc import parse_endpoints
    from lcpp_zh.runtime.runner_client import RunnerClient
    from lcpp_zh.runtime.runner_protocol import RunnerConfig
    from lcpp_zh.server.registry import ServedModel

    conversion_template = settings.template if isinstance(settings.template, str) else None
    path = resolve_model(spec.name, settings.quant, infer_dtype=settings.infer_dtype, template=conversion_template)
    check_gguf_file(path)
    plan = plan_for(path, settings.n_ctx, parse_gpu_layers(settings.gpu_layers), settings.gpus, settings.main_gpu,
                    parse_tensor_split(settings.tensor_split), parse_endpoints(settings.rpc))
    logger.warning("%s: %s", spec.alias, plan.describe())
    config = RunnerConfig(model_path=str(path), n_ctx=settings.n_ctx, n_parallel=settings.n_parallel,
                          n_threads=settings.n_threads, n_batch=settings.n_batch, max_queue=settings.max_queue,
                          embeddings=settings.embeddings, loras=[(str(p), float(s)) for p, s in settings.loras],
                          plan=asdict(plan), log_level=logging.getLogger().getEffectiveLevel())
    engine = RunnerClient(config, alias=spec.alias, on_restart=on_restart)
    return ServedModel(alias=spec.alias, engine=engine, path=Path(path), template=settings.template)


def _chosen_template(template: str | None, template_file: Path | None, model_source: str | None) -> Any:
    """--template-file, else --template unless auto, else the seed's --model_source, else None (auto)."""
    from lcpp_zh.templates import get_template, load_template_file

    if template_file is not None:
        return load_template_file(template_file)
    if template and template != "auto":
        return get_template(template).name  # raises TemplateError for an unknown name before binding the port
    if model_source:
        return MODEL_SOURCE_TEMPLATE[model_source]
    return None


@click.command("serve")
@click.argument("models", nargs=-1)
@click.option("--model_path", "model_paths", multiple=True, help="The seed's flag: a model to serve (like MODEL).")
@model_options
@click.option("--model_source", type=click.Choice(sorted(MODEL_SOURCE_TEMPLATE)), default=None,
              help="The seed's flag: llama2_chinese (template llama2-chinese) or llama2_meta (template llama2).")
@click.option("--host", default="127.0.0.1", envvar="LCPP_ZH_HOST", help="Address to bind; 0.0.0.0 opens it to the network.")
@click.option("--port", default=8001, type=click.IntRange(0, 65535), envvar="LCPP_ZH_PORT", help="TCP port (the seed's 8001).")
@click.option("--parallel", default=4, type=click.IntRange(1, 256), help="Sequence slots per model (concurrent generations).")
@click.option("--queue", "max_queue", default=64, type=click.IntRange(0, 100000), help="Requests waiting beyond the slots before 503.")
@click.option("--batch", "n_batch", default=512, type=click.IntRange(1, 1 << 16), help="Tokens per decode step (prompt chunk size).")
@click.option("--embeddings/--no-embeddings", default=True, help="Serve /v1/embeddings (a second, small context made on first use).")
@click.option("--api-key", envvar="LCPP_ZH_API_KEY", default=None, show_default=False,
              help="Require `Authorization: Bearer KEY` on every API route (env LCPP_ZH_API_KEY).")
@click.option("--max-body-bytes", default=4 * 1024 * 1024, type=click.IntRange(1024, 1 << 30), help="Largest request body accepted.")
@click.option("--stream-interval", "stream_interval_ms", default=50, type=click.IntRange(0, 1000),
              help="Least milliseconds between two streamed chunks; tokens made meanwhile share one chunk. "
                   "The first token and the end are never held back; 0 sends every token as it comes.")
@click.option("--shutdown-timeout", "shutdown_timeout_s", default=10.0, type=click.FloatRange(0, 3600),
              help="On SIGTERM or Ctrl-C: seconds the requests in flight may take to finish before they are cut.")
def serve(models: tuple[str, ...], model_paths: tuple[str, ...], model_source: str | None, host: str, port: int,
          parallel: int, max_queue: int, n_batch: int, embeddings: bool, api_key: str | None, max_body_bytes: int,
          stream_interval_ms: int, shutdown_timeout_s: float, **model_opts: Any) -> None:
    """Serve MODELs over HTTP: the OpenAI API, the seed's POST /generate and a chat page at /.

    Each MODEL (a .gguf, a Hugging Face folder or a repo id, optionally ALIAS=MODEL) is served under its alias;
    --ctx is the context of one model, shared by its --parallel slots.

    \b
    Examples:
      lcpp-zh serve atom.Q4_K_M.gguf
      lcpp-zh serve atom=atom.Q4_K_M.gguf smol=SmolLM2.gguf --parallel 8 --api-key secret
      lcpp-zh serve --model_path ./Atom-7B-Chat --infer_dtype int4 --model_source llama2_chinese
    """
    from lcpp_zh.server.app import run_server

    specs = parse_model_specs([*models, *model_paths])
    n_ctx = model_opts["n_ctx"]
    if n_ctx < 16 * parallel:
        raise LcppError(f"--ctx {n_ctx} is too small for {parallel} slots: give at least {16 * parallel}")
    template = _chosen_template(model_opts["template"], model_opts["template_file"], model_source)
    settings = ServeSettings(n_ctx=n_ctx, n_parallel=parallel, n_threads=model_opts["threads"], n_batch=n_batch,
                             max_queue=max_queue, gpu_layers=model_opts["gpu_layers"], gpus=model_opts["gpus"],
                             main_gpu=model_opts["main_gpu"], rpc=model_opts["rpc"],
                             tensor_split=model_opts["tensor_split"], embeddings=embeddings,
                             loras=tuple(pair_loras(model_opts["loras"], model_opts["lora_scales"])),
                             quant=model_opts["quant"], infer_dtype=model_opts["infer_dtype"], template=template)

    def loader() -> list[Any]:
        loaded: list[Any] = []
        try:
            for spec in specs:
                loaded.append(load_model(spec, settings))
        except BaseException:
            for model in loaded:  # the server will not start: free what was loaded
                model.engine.close()
            raise
        logger.warning("ready: %s on http://%s:%d", ", ".join(s.alias for s in specs), host, port)
        return loaded

    run_server(loader, host=host, port=port, api_key=api_key, max_body_bytes=max_body_bytes,
               stream_interval_s=stream_interval_ms / 1000, shutdown_timeout_s=shutdown_timeout_s)


COMMANDS: list[click.Command] = [serve]
