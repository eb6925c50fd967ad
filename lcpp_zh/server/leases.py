"""Leases: a model held for one request, so the registry never unloads or evicts it mid-answer.

`hold_model(request, name)` is what a route calls; the lease is released by `LeaseReleaser` once the app has
sent the whole response (a stream included), whatever ends it: success, error, or a client gone away.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

# `registry.acquire(..., keep_alive=DEFAULT)`: the server's --keep-alive.
DEFAULT: Any = object()
_SCOPE_KEY = "lcpp_zh.leases"


class Lease:
    """A model held for one request: release it (idempotent) once the response is complete.

    `with await registry.acquire(name) as lease:` releases at the end of the block unless the release was
    handed to a streaming response with `lease.hand_over()`.
    """

    def __init__(self, release: Callable[[float | None], None], model: Any, keep_alive: float | None) -> None:
        self._release = release
        self.model = model
        self.keep_alive = keep_alive
        self._released = False
        self._handed_over = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._release(self.keep_alive)

    def hand_over(self) -> Callable[[], None]:
        """The release, for a response that ends later (a stream); the `with` block no longer releases."""
        self._handed_over = True
        return self.release

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *_exc: object) -> None:
        if not self._handed_over:
            self.release()


async def hold_model(request: Any, name: str | None, keep_alive: Any = DEFAULT) -> Any:
    """The ServedModel for `name` (None: the default one), loaded if needed and held until the response to
    `request` has been sent."""
    leases = request.scope.get(_SCOPE_KEY)
    lease = await request.app.state.lcpp.registry.acquire(name, keep_alive)
    if leases is None:  # an app built without LeaseReleaser: nothing would release it later
        lease.release()
    else:
        leases.append(lease)
    return lease.model


class LeaseReleaser:
    """ASGI middleware: releases the leases a request's route took once the app has answered (for a
    StreamingResponse the app call returns only after the last chunk, or after the client went away)."""

    def __init__(self, app: Callable[[dict, Any, Any], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        leases: list[Lease] = []
        scope[_SCOPE_KEY] = leases
        try:
            await self.app(scope, receive, send)
        finally:
            for lease in leases:
                lease.release()
