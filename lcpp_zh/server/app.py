"""The FastAPI application factory and the uvicorn runner behind `lcpp-zh serve`.

`create_app` wires the routes, error handlers and front-door middleware around a ModelRegistry whose loader
runs in a thread once the server listens. `run_server` runs uvicorn until Ctrl-C, or until loading fails,
in which case the loading error is raised to the caller (the CLI prints it as one line).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI

from lcpp_zh.errors import LcppError
from lcpp_zh.server.auth import FrontDoor
from lcpp_zh.server.httperrors import install_error_handlers
from lcpp_zh.server.metrics import Metrics
from lcpp_zh.server.registry import ModelRegistry, ServedModel

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
# The seed's accelerate_server.py listens on 8001; its clients expect it.
DEFAULT_PORT = 8001
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
# Streams send at most one chunk per 50 ms (20 a second, which reads as smooth): several tokens then share
# a chunk, which spares the event loop and the client a wake-up per token on a busy machine.
DEFAULT_STREAM_INTERVAL_S = 0.05


@dataclass
class ServerState:
    """What the routes need, kept on app.state.lcpp."""

    registry: ModelRegistry
    metrics: Metrics = field(default_factory=Metrics)
    retry_after_s: int = 1
    stream_interval_s: float = DEFAULT_STREAM_INTERVAL_S  # least time between two streamed chunks


def create_app(loader: Callable[[], list[ServedModel]], *, api_key: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, stream_interval_s: float = DEFAULT_STREAM_INTERVAL_S,
               on_load_failure: Callable[[BaseException], None] | None = None) -> Any:
    """The ASGI app: FastAPI routes behind the API-key / body-size middleware.

    `loader` builds the served models (engines) and runs in a background thread at start-up.
    """
    from lcpp_zh.server import lora_api, misc_api, openai_api, seed_api

    registry = ModelRegistry(loader, on_failure=on_load_failure)
    state = ServerState(registry=registry, stream_interval_s=stream_interval_s)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        registry.start_loading()
        try:
            yield
        finally:
            registry.wait_loaded(timeout=0)
            registry.close()

    app = FastAPI(title="lcpp-zh", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.lcpp = state
    install_error_handlers(app)
    for module in (openai_api, seed_api, misc_api, lora_api):
        app.include_router(module.router)
    front = FrontDoor(app, api_key=api_key, max_body_bytes=max_body_bytes, metrics=state.metrics)
    front.state = state  # for tests and callers that hold the wrapper
    return front


def _check_port(host: str, port: int) -> None:
    """Fail before loading any model when the address cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise LcppError(f"cannot listen on {host}:{port}: {exc}") from exc
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise LcppError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def run_server(loader: Callable[[], list[ServedModel]], *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
               api_key: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               stream_interval_s: float = DEFAULT_STREAM_INTERVAL_S) -> None:
    """Serve until interrupted; raises the loading error if the models could not be loaded."""
    import uvicorn

    failure: list[BaseException] = []
    server_box: list[Any] = []

    def on_failure(exc: BaseException) -> None:
        failure.append(exc)
        if server_box:
            server_box[0].should_exit = True

    _check_port(host, port)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        logger.warning("listening on %s without --api-key: anyone who can reach this machine can use the models", host)
    app = create_app(loader, api_key=api_key, max_body_bytes=max_body_bytes, stream_interval_s=stream_interval_s,
                     on_load_failure=on_failure)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=3, lifespan="on")
    server = uvicorn.Server(config)
    server_box.append(server)
    logger.warning("lcpp-zh serving on http://%s:%d (loading models)", host, port)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits when it cannot bind; a library raises instead
        raise LcppError(f"cannot listen on {host}:{port}: address in use or not allowed") from exc
    if failure:
        exc = failure[0]
        if isinstance(exc, LcppError):
            raise exc
        raise LcppError(f"cannot serve: {exc}") from exc
    if not server.started:
        raise LcppError(f"cannot listen on {host}:{port} (in use, or not allowed)")
