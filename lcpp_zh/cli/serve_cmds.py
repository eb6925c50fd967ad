"""`lcpp-zh serve`: the HTTP server (OpenAI-compatible API, the seed's /generate, the web chat page).

This module only parses options: lcpp_zh.server.model_loader loads the models, lcpp_zh.server.app serves
them. Model options (--quant, --infer_dtype, --template, --ctx, --threads, --gpu-layers, --gpus, ...) are the
shared ones of `chat`; the seed's --model_path and --model_source work too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from lcpp_zh.cli.chat_cmds import model_options, parse_model_options
from lcpp_zh.errors import LcppError
from lcpp_zh.runtime.settings import EngineSettings
from lcpp_zh.server.keep_alive import describe_keep_alive, parse_keep_alive
from lcpp_zh.server.overflow import OVERFLOW_MODES
from lcpp_zh.server.settings import SERVE_EMBEDDINGS, SERVE_PARALLEL, ServerSettings
from lcpp_zh.templates import MODEL_SOURCE_TEMPLATES


def _keep_alive_option(_ctx: click.Context, _param: click.Parameter, value: str) -> float | None:
    from lcpp_zh.server.httperrors import ApiError

    try:
        return parse_keep_alive(value)
    except ApiError as exc:
        raise click.BadParameter(exc.message) from None


@click.command("serve")
@click.argument("models", nargs=-1)
@click.option("--model_path", "model_paths", multiple=True, help="The seed's flag: a model to serve (like MODEL).")
@model_options
@click.option("--model_source", type=click.Choice(sorted(MODEL_SOURCE_TEMPLATES)), default=None,
              help="The seed's flag: llama2_chinese (template llama2-chinese) or llama2_meta (template llama2).")
@click.option("--host", default=ServerSettings.host, envvar="LCPP_ZH_HOST",
              help="Address to bind; 0.0.0.0 opens it to the network.")
@click.option("--port", default=ServerSettings.port, type=click.IntRange(0, 65535), envvar="LCPP_ZH_PORT",
              help="TCP port (the seed's 8001).")
@click.option("--parallel", "n_parallel", default=SERVE_PARALLEL, type=click.IntRange(1, 256),
              help="Sequence slots per model (concurrent generations).")
@click.option("--queue", "max_queue", default=EngineSettings.max_queue, type=click.IntRange(0, 100000),
              help="Requests waiting beyond the slots before 503.")
@click.option("--batch", "n_batch", default=EngineSettings.n_batch, type=click.IntRange(1, 1 << 16),
              help="Tokens per decode step (prompt chunk size).")
@click.option("--embeddings/--no-embeddings", default=SERVE_EMBEDDINGS,
              help="Serve /v1/embeddings (a second, small context made on first use).")
@click.option("--api-key", envvar="LCPP_ZH_API_KEY", default=ServerSettings.api_key, show_default=False,
              help="Require `Authorization: Bearer KEY` on every API route (env LCPP_ZH_API_KEY).")
@click.option("--max-body-bytes", default=ServerSettings.max_body_bytes, type=click.IntRange(1024, 1 << 30),
              help="Largest request body accepted.")
@click.option("--stream-interval", "stream_interval_ms", default=round(ServerSettings.stream_interval_s * 1000),
              type=click.IntRange(0, 1000),
              help="Least milliseconds between two streamed chunks; tokens made meanwhile share one chunk. "
                   "The first token and the end are never held back; 0 sends every token as it comes.")
@click.option("--shutdown-timeout", "shutdown_timeout_s", default=ServerSettings.shutdown_timeout_s,
              type=click.FloatRange(0, 3600),
              help="On SIGTERM or Ctrl-C: seconds the requests in flight may take to finish before they are cut.")
@click.option("--cors-origins", envvar="LCPP_ZH_CORS_ORIGINS", default=None, metavar="ORIGIN[,ORIGIN]",
              help="Let pages from these origins (scheme://host[:port], or * for any) call the API from a browser, "
                   "as LobeChat or Open WebUI do; default none. The API key is still required.")
@click.option("--keep-alive", "keep_alive", default=describe_keep_alive(ServerSettings.keep_alive_s),
              envvar="LCPP_ZH_KEEP_ALIVE", callback=_keep_alive_option,
              help="How long a model stays loaded after its last request (Ollama's forms: 300, 5m, 1h30m); "
                   "0 unloads at once, -1 keeps models loaded. The models named here are loaded at start.")
@click.option("--max-loaded", type=click.IntRange(1, 1024), default=ServerSettings.max_loaded,
              help="Most models loaded at once; loading one more unloads the least recently used idle one.")
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), default=ServerSettings.models_dir,
              envvar="LCPP_ZH_MODELS_DIR",
              help="A folder of .gguf files served by name (the file name without .gguf), loaded on first request; "
                   "the cache's models (`lcpp-zh list`) are served too.")
@click.option("--context-overflow", type=click.Choice(OVERFLOW_MODES), default=ServerSettings.context_overflow,
              help="A chat history longer than the context: error (a 400), or truncate-middle (drop whole old turns "
                   "after the system prompt, said in usage.truncated_messages and the X-Context-Truncated header).")
def serve(models: tuple[str, ...], model_paths: tuple[str, ...], model_source: str | None, host: str, port: int,
          api_key: str | None, max_body_bytes: int, stream_interval_ms: int, shutdown_timeout_s: float,
          context_overflow: str, **kwargs: Any) -> None:
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
    from lcpp_zh.server.cors import parse_cors_origins
    from lcpp_zh.server.model_loader import model_source as source_of
    from lcpp_zh.server.model_loader import parse_model_specs

    on_demand = {k: kwargs.pop(k) for k in ("keep_alive", "max_loaded", "models_dir")}
    cors_origins = parse_cors_origins(kwargs.pop("cors_origins"))
    names = [*models, *model_paths]
    if not names and not _servable_files(on_demand["models_dir"]):
        raise LcppError("no model to serve: give `lcpp-zh serve MODEL.gguf` (or --model_path PATH), or "
                        "--models-dir DIR with .gguf files")
    specs = parse_model_specs(names) if names else []
    engine = {k: kwargs.pop(k) for k in ("n_parallel", "max_queue", "n_batch", "embeddings")}
    choice, settings, template = parse_model_options(kwargs, model_source=model_source, **engine)
    source = source_of(specs, choice, settings, template)
    run_server(source, ServerSettings(host=host, port=port, api_key=api_key, max_body_bytes=max_body_bytes,
                                      stream_interval_s=stream_interval_ms / 1000,
                                      shutdown_timeout_s=shutdown_timeout_s, cors_origins=cors_origins,
                                      keep_alive_s=on_demand["keep_alive"], max_loaded=on_demand["max_loaded"],
                                      models_dir=on_demand["models_dir"], context_overflow=context_overflow))



def _servable_files(folder: Path | None) -> bool:
    """Whether a server without MODEL arguments has anything to serve: GGUFs in --models-dir or the cache."""
    from lcpp_zh.resolve import gguf_files, models_dir

    if folder is not None and not folder.is_dir():
        raise LcppError(f"--models-dir {folder}: no such folder")
    return bool((folder is not None and gguf_files(folder)) or gguf_files(models_dir()))


COMMANDS: list[click.Command] = [serve]
