"""Front door middleware (plain ASGI, so streaming responses pass untouched): API key, body size, request counts.

With an API key every route except /health (and the static chat page, which holds no data and must load in a
browser before the user can type the key) needs `Authorization: Bearer KEY`. Bodies over the limit are refused
with 413 before any route sees them, whether or not the client sent Content-Length.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from lcpp_zh.server.httperrors import error_body_for
from lcpp_zh.server.metrics import Metrics
from lcpp_zh.server.page_files import is_page_path

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/health"})


class RouteLabels:
    """The /metrics label of a request path: the route serving it (its template, e.g. /static/{name:path},
    for a route with parameters), else "other", so scanners cannot grow the label set. Built from the app's
    routes when the app is made (create_app), so a new route is counted without being listed here."""

    def __init__(self, routes: Iterable[Any]) -> None:
        # Routes with a path (not the router includes, which recent FastAPI keeps as entries of their own).
        routes = [r for r in routes if hasattr(r, "path_regex")]
        self.exact = frozenset(r.path for r in routes if not r.param_convertors)
        self.templated = [(r.path_regex, r.path) for r in routes if r.param_convertors]

    def __call__(self, path: str) -> str:
        if path in self.exact:
            return path
        return next((template for regex, template in self.templated if regex.match(path)), "other")


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            text = value.decode("latin-1").strip()
            if text[:7].lower() == "bearer ":
                return text[7:].strip()
            return None
    return None


class FrontDoor:
    """API key check, body size limit and per-route counters around the FastAPI app."""

    def __init__(self, app: App, *, api_key: str | None, max_body_bytes: int, metrics: Metrics,
                 routes: Iterable[Any] = ()) -> None:
        self.app = app
        self.api_key = api_key or None
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.route_label = RouteLabels(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = self.route_label(path)
        status_seen = 0

        async def counting_send(message: Message) -> None:
            nonlocal status_seen
            if message["type"] == "http.response.start":
                status_seen = message["status"]
            await send(message)

        self.metrics.change_in_flight(1)
        try:
            await self._guarded(scope, receive, counting_send, path)
        finally:
            self.metrics.change_in_flight(-1)
            self.metrics.observe_http(route, status_seen)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        if (self.api_key and path not in OPEN_PATHS and not is_page_path(path)
                and scope.get("method") != "OPTIONS"):
            given = _bearer(scope)
            if given is None or not hmac.compare_digest(given.encode(), self.api_key.encode()):
                await _send_json(send, 401, error_body_for(path, 401, "missing or wrong API key: send "
                                                           "'Authorization: Bearer KEY'", code="invalid_api_key"),
                                 [(b"www-authenticate", b"Bearer")])
                return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._too_large(send, path)
            return
        body, more = await _read_body(receive, self.max_body_bytes)
        if more:
            await self._too_large(send, path)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _too_large(self, send: Send, path: str) -> None:
        await _send_json(send, 413, error_body_for(path, 413, f"request body is larger than {self.max_body_bytes} "
                                                   "bytes", code="body_too_large"))


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The whole body, or (partial, True) once it passes `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the buffered body out once, then waits on the real one (for disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
