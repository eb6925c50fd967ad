"""The FastAPI application factory and the uvicorn runner behind `lcpp-zh serve`.

`create_app` wires the routes, error handlers and front-door middleware around a ModelRegistry whose loader
runs in a thread once the server listens. `run_server` runs uvicorn until Ctrl-C, or until loading fails,
in which case the loading error is raised to the caller (the CLI prints it as one line).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI

from lcpp_zh import __version__
from lcpp_zh.common.console import status
from lcpp_zh.errors import LcppError
from lcpp_zh.server.auth import FrontDoor
from lcpp_zh.server.cors import with_cors
from lcpp_zh.server.httperrors import install_error_handlers
from lcpp_zh.server.leases import LeaseReleaser
from lcpp_zh.server.metrics import Metrics
from lcpp_zh.server.registry import ModelRegistry, ModelSource
from lcpp_zh.server.settings import ServerSettings

logger = logging.getLogger(__name__)

DEFAULT_SETTINGS = ServerSettings()  # frozen: one shared default is safe


@dataclass
class ServerState:
    """What the routes need, kept on app.state.lcpp."""

    registry: ModelRegistry
    metrics: Metrics = field(default_factory=Metrics)
    retry_after_s: int = 1
    stream_interval_s: float = ServerSettings.stream_interval_s  # least time between two streamed chunks
    context_overflow: str = ServerSettings.context_overflow  # chat histories beyond the context (server.overflow)


def create_app(loader: ModelSource, settings: ServerSettings = DEFAULT_SETTINGS,
               *, on_load_failure: Callable[[BaseException], None] | None = None) -> Any:
    """The ASGI app: FastAPI routes behind the API-key / body-size middleware, behind CORS when asked.

    `loader` says what the registry can load. Models named in it are preloaded; the others load on first
    request.
    """
    from lcpp_zh.server import lora_api, misc_api, ollama_api, openai_api, seed_api

    metrics = Metrics()
    registry = ModelRegistry(loader, models_dir=settings.models_dir, keep_alive_s=settings.keep_alive_s,
                             max_loaded=settings.max_loaded, on_failure=on_load_failure,
                             on_restart=metrics.observe_restart)
    state = ServerState(registry=registry, metrics=metrics, stream_interval_s=settings.stream_interval_s,
                        context_overflow=settings.context_overflow)
    state.metrics.bind_models(lambda: registry.all() if registry.state == "ready" else [])

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        registry.start_loading()
        try:
            yield
        finally:
            registry.close()

    # The OpenAPI schema is served behind the API key like every API route (the fuzz test reads it).
    app = FastAPI(title="lcpp-zh", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json")
    app.state.lcpp = state
    install_error_handlers(app)
    routers = [module.router for module in (openai_api, seed_api, misc_api, lora_api, ollama_api)]
    for router in routers:
        app.include_router(router)
    # The routes /metrics counts by name: the app's own (/openapi.json) and every router's.
    routes = [*app.routes, *(route for router in routers for route in router.routes)]
    # LeaseReleaser: the models a request held are released once its response has been sent.
    front = FrontDoor(LeaseReleaser(app), api_key=settings.api_key, max_body_bytes=settings.max_body_bytes,
                      metrics=state.metrics, routes=routes)
    # CORS outside the key check: a preflight carries no key, the request that follows does.
    outer = with_cors(front, settings.cors_origins)
    outer.state = state  # for tests and callers that hold the wrapper
    outer.registry = registry
    return outer


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


def _graceful_server(config: Any, grace_s: float, on_grace_over: Callable[[], None]) -> Any:
    """uvicorn's Server, plus a timer started by the first SIGTERM or Ctrl-C that ends the requests still
    running once the grace period is over (uvicorn itself would cut their connections)."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        timer: threading.Timer | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            if self.timer is None:
                status(logger, "shutting down: no new requests; %g s for those in flight", grace_s)
                self.timer = threading.Timer(grace_s, on_grace_over)
                self.timer.daemon = True
                self.timer.start()

    return GracefulServer(config)


@contextlib.contextmanager
def _quiet_exit_signals() -> Iterator[None]:
    """SIGTERM and SIGINT end the server through uvicorn's graceful shutdown, then the process exits 0.

    uvicorn re-raises the signal it caught once it has shut down (so that a default handler kills the
    process); with these handlers in place that re-raise does nothing and run_server returns normally.
    """
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_server(loader: ModelSource, settings: ServerSettings = DEFAULT_SETTINGS) -> None:
    """Serve until SIGTERM or Ctrl-C, then stop accepting, let the requests in flight finish (at most
    `settings.shutdown_timeout_s`), end the runners and return; raises the loading error if loading failed."""
    import uvicorn

    failure: list[BaseException] = []
    server_box: list[Any] = []

    def on_failure(exc: BaseException) -> None:
        failure.append(exc)
        if server_box:
            server_box[0].should_exit = True

    host, port, grace_s = settings.host, settings.port, settings.shutdown_timeout_s
    _check_port(host, port)
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        logger.warning("listening on %s without --api-key: anyone who can reach this machine can use the models", host)

    app = create_app(loader, settings, on_load_failure=on_failure)
    # uvicorn's own limit comes a little later than ours: at ours the streams still open are ended with an
    # error event and [DONE], so that no client sees a connection cut in the middle of a chunk.
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=grace_s + 5, lifespan="on")
    registry = app.registry

    def grace_over() -> None:
        logger.warning("shutdown: %g s are up; ending the requests still running", grace_s)
        registry.interrupt_all("the server is shutting down")

    server = _graceful_server(config, grace_s, grace_over)
    server_box.append(server)
    status(logger, "lcpp-zh serving on http://%s:%d (loading models)", host, port)
    try:
        with _quiet_exit_signals():
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
