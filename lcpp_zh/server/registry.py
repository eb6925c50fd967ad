"""The models a server can serve, loaded on first use and unloaded after their keep-alive.

Servable: the models named on the command line (preloaded at start), the GGUFs in the cache and in
--models-dir (looked up by alias, never by a path from the request). Routes hold a model through a lease
(`await registry.acquire(name)` ... `lease.release()`); a model in use is never unloaded or evicted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lcpp_zh.common.console import status
from lcpp_zh.runtime.settings import EngineSettings
from lcpp_zh.server.httperrors import ApiError
from lcpp_zh.server.leases import DEFAULT, Lease
from lcpp_zh.server.model_catalog import Catalog, Slot

logger = logging.getLogger(__name__)

# Loads (resolve, maybe convert, start a runner) run in threads of their own, not the default executor that
# tokenizing and grammar checks share: a conversion of several minutes must not starve those.
_LOAD_THREADS = 2


@dataclass
class ServedModel:
    """One engine under one alias; `template` is a template name or object (None: the model's own / auto)."""

    alias: str
    engine: Any
    path: Path | None = None
    template: Any = None
    created: int = field(default_factory=lambda: int(time.time()))

    def runner_state(self) -> dict[str, Any]:
        """For /health and /v1/models: state (ready, restarting, failed), the last error, restarts so far."""
        engine = self.engine
        state: dict[str, Any] = {"state": str(getattr(engine, "state", "ready" if getattr(engine, "alive", True)
                                                      else "failed"))}
        if getattr(engine, "error", None):
            state["error"] = str(engine.error)
        if isinstance(getattr(engine, "restarts", None), int):
            state["restarts"] = engine.restarts
        return state

    @property
    def template_name(self) -> str | None:
        """The template's name for clients (a --template-file template is an object with a name)."""
        return getattr(self.template, "name", self.template)


@dataclass(frozen=True)
class ModelEntry:
    """One servable model as /v1/models and /api/ps show it."""

    alias: str
    path: Path | None
    size_bytes: int | None
    status: str                  # loaded | loading | available
    expires_at: float | None     # epoch seconds; None: never, or not loaded
    model: ServedModel | None
    template_name: str | None
    error: str | None = None     # why the last load failed


@dataclass(frozen=True)
class ModelSource:
    """What a server can load: `load(alias, name, named)` builds one ServedModel (blocking: it resolves,
    maybe converts, starts a runner) and `named` are the (alias, MODEL) pairs of the command line."""

    load: Callable[[str, str, bool], ServedModel] | None = None
    named: tuple[tuple[str, str], ...] = ()
    named_template: str | None = None
    max_waiting: int = EngineSettings.max_queue


class ModelRegistry:
    """Loads models on demand through `load(alias, name, named)` (blocking; run in a thread), unloads them
    after their keep-alive and, with `max_loaded`, evicts the least recently used idle one."""

    def __init__(self, source: ModelSource, *, models_dir: Path | None = None,
                 scan_cache: bool = True, keep_alive_s: float | None = 300.0, max_loaded: int | None = None,
                 on_failure: Callable[[BaseException], None] | None = None,
                 on_restart: Callable[[str], None] | None = None) -> None:
        self._source = source
        self.catalog = Catalog(source.named, named_template=source.named_template, models_dir=models_dir,
                               scan_cache=scan_cache)
        self.keep_alive_s = keep_alive_s
        self.max_loaded = max_loaded
        self.max_waiting = source.max_waiting
        self._on_failure = on_failure
        self._on_restart = on_restart
        self._waiting = 0
        self._changed: asyncio.Condition | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(_LOAD_THREADS, thread_name_prefix="lcpp-zh-load")
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._preload: asyncio.Task | None = None
        # /health: "loading" until the models named on the command line are loaded, "failed" if one could not be.
        self.state = "loading" if self.catalog.named_aliases else "ready"
        self.error: str | None = None

    # -- start and stop --------------------------------------------------------------------------------

    def start_loading(self) -> None:
        """Preload the models named on the command line (in the running event loop)."""
        self._changed = asyncio.Condition()
        self._loop = asyncio.get_running_loop()
        self._preload = asyncio.get_running_loop().create_task(self._preload_named())

    async def _preload_named(self) -> None:
        """Models named on the command line load at start, as users of `serve MODEL` expect (/health is ready
        once they are), and then expire after --keep-alive like any other: the point of the keep-alive is to
        give a laptop its memory back while nobody asks, and the next request reloads them in seconds.
        `--keep-alive -1` keeps them (and every model) loaded."""
        try:
            for alias, _name in self._source.named:
                (await self.acquire(alias)).release()
            self.state = "ready"
            if self._source.named:
                status(logger, "ready: %s", ", ".join(alias for alias, _name in self._source.named))
        except BaseException as exc:  # noqa: BLE001 - reported through /health and the CLI
            self.state = "failed"
            self.error = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            logger.error("loading models failed: %s", self.error)
            if self._on_failure is not None:
                self._on_failure(getattr(exc, "__cause__", None) or exc)

    def close(self) -> None:
        """Unload everything; a load still running closes its model when it ends."""
        self._closed = True
        if self._preload is not None:
            self._preload.cancel()
        for slot in self.catalog.slots():
            if slot.timer is not None:
                slot.timer.cancel()
            if slot.loading is not None:
                slot.loading.cancel()
            if slot.model is not None:
                self._close_engine(slot.model)
                slot.model = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- what routes call ------------------------------------------------------------------------------

    def entries(self) -> list[ModelEntry]:
        """Every servable model with its state (the folders are rescanned at most every few seconds)."""
        out = []
        for slot in self.catalog.slots(refresh=True):
            status = "loaded" if slot.model is not None else "loading" if slot.loading is not None else "available"
            model = slot.model
            out.append(ModelEntry(alias=slot.alias, path=model.path if model and model.path else slot.path,
                                  size_bytes=slot.size_bytes, status=status,
                                  expires_at=slot.expires_at if model is not None else None, model=model,
                                  template_name=model.template_name if model else slot.template_name,
                                  error=slot.error))
        return out

    def all(self) -> list[ServedModel]:
        """The loaded models."""
        return [slot.model for slot in self.catalog.slots() if slot.model is not None]

    @property
    def aliases(self) -> list[str]:
        return [slot.alias for slot in self.catalog.slots(refresh=True)]

    def get(self, alias: str | None) -> ServedModel:
        """The model for `alias` if it is loaded now, without holding it (routes use `acquire`)."""
        slot = self._lookup(alias)
        if slot.model is None:
            raise ApiError(503, f"model {slot.alias!r} is not loaded; a request that names it loads it",
                           code="model_not_loaded", headers={"Retry-After": "2"})
        return slot.model

    async def acquire(self, alias: str | None, keep_alive: Any = DEFAULT) -> Lease:
        """Hold `alias` (None: the default model) for one request, loading it first if needed. Requests for
        a model being loaded wait for it (at most `max_waiting` wait at once); a failed load is a 500 naming
        the cause, and the next request tries again."""
        slot = self._lookup(alias)
        keep = self.keep_alive_s if keep_alive is DEFAULT else keep_alive
        if self._source.load is None:  # the older whole-list loader cannot load a model again: never unload
            keep = None
        self._loop = asyncio.get_running_loop()
        await self._until_loaded(slot)
        slot.users += 1  # no await since the load: the model cannot have been unloaded in between
        slot.keep_alive = keep  # the latest request's keep-alive wins, as in Ollama
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None
        slot.last_used = time.monotonic()
        return Lease(lambda keep_alive: self._release(slot, keep_alive), slot.model, keep)

    async def unload(self, alias: str) -> bool:
        """Unload `alias` now (Ollama's keep_alive 0 without a prompt), or as soon as its requests end.
        False when it was not loaded."""
        slot = self._lookup(alias)
        if slot.model is None and slot.loading is None:
            return False
        slot.keep_alive = 0
        if slot.users == 0:
            await self._unload(slot)
        else:
            slot.draining = True
        return True

    def interrupt_all(self, message: str) -> None:
        """End every request in flight with an error event (engines that run in-process have none to end)."""
        for model in self.all():
            interrupt = getattr(model.engine, "interrupt_all", None)
            if interrupt is not None:
                interrupt(message)

    # -- internals -------------------------------------------------------------------------------------

    def _lookup(self, alias: str | None) -> Slot:
        """By alias only: a name is never turned into a path, so a request cannot load another file."""
        if not alias:
            slot = self.catalog.default()
            if slot is None:
                raise ApiError(400, "no model named and no default: name one of " + self._names(), param="model",
                               code="model_required")
            return slot
        slot = self.catalog.find(alias)
        if slot is None:
            raise ApiError(404, f"model {alias!r} is not served here; served: {self._names()}", param="model",
                           code="model_not_found")
        return slot

    def _names(self) -> str:
        names = [slot.alias for slot in self.catalog.slots()]
        return ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "") or "none"

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:  # used without start_loading (tests that drive the registry directly)
            self._changed = asyncio.Condition()
        return self._changed

    async def _notify(self) -> None:
        async with self._condition():
            self._condition().notify_all()

    async def _until_loaded(self, slot: Slot) -> None:
        while slot.model is None or slot.draining:
            if slot.loading is None and not slot.draining:
                slot.loading = asyncio.get_running_loop().create_task(self._load(slot))
                # Retrieved here too: when every waiter has gone, asyncio would log the failure as unhandled.
                slot.loading.add_done_callback(lambda task: task.cancelled() or task.exception())
            self._waiting += 1
            slot.waiters += 1  # a waited-for model is not evicted between its load and its waiters' leases
            try:
                if self._waiting > self.max_waiting:
                    raise ApiError(503, f"{self.max_waiting} requests are already waiting for models to load; "
                                        "retry shortly", code="queue_full", headers={"Retry-After": "2"})
                if slot.loading is not None:
                    # shield: a waiter whose client went away must not cancel the load the others wait for.
                    await asyncio.shield(slot.loading)
                else:
                    async with self._condition():
                        await self._condition().wait()
            finally:
                self._waiting -= 1
                slot.waiters -= 1
                if slot.waiters == 0:  # a load waiting for room may now evict this one
                    asyncio.get_running_loop().create_task(self._notify())

    async def _load(self, slot: Slot) -> None:
        try:
            model = await self._run_load(slot)
            if self._closed:
                self._close_engine(model)
                raise ApiError(503, "the server is shutting down", code="shutting_down")
            if hasattr(model.engine, "on_restart"):  # a runner process: count its restarts
                model.engine.on_restart = self._on_restart
            slot.model, slot.error = model, None
            if model.path is not None:
                slot.path = Path(model.path)
                slot.size_bytes = slot.size_bytes or _size_of(slot.path)
            status(logger, "loaded %s", slot.alias)
        finally:
            slot.loading, slot.room = None, False  # the model (if any) is in place before waiters look
            await self._notify()

    async def _run_load(self, slot: Slot) -> ServedModel:
        """Make room, then build the model in a load thread; a failure becomes a 500 naming its cause."""
        try:
            await self._make_room(slot)
            status(logger, "loading %s", slot.alias)
            if self._source.load is None:
                raise ValueError("this server cannot load models on demand")
            future = asyncio.get_running_loop().run_in_executor(
                self._executor, self._source.load, slot.alias, slot.name, slot.named)
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                future.add_done_callback(self._close_late)
                raise
        except Exception as exc:
            slot.error = str(exc) or type(exc).__name__
            logger.error("loading %s failed: %s", slot.alias, slot.error)
            raise ApiError(500, f"loading model {slot.alias!r} failed: {slot.error}",
                           code="model_load_failed") from exc

    async def _make_room(self, slot: Slot) -> None:
        """With --max-loaded N: evict the least recently used idle model; when all are busy, mark the least
        recently used one in use to unload after its requests (new ones for it wait), so no model starves.
        A model whose only claim is requests about to take it (just loaded) is left to them: they release it
        soon, and evicting it before they run would let two loads evict each other forever."""
        while self.max_loaded and self._resident(slot) >= self.max_loaded:
            others = [s for s in self.catalog.slots() if s is not slot and s.model is not None and s.loading is None]
            idle = [s for s in others if s.users == 0 and s.waiters == 0]
            if idle:
                await self._unload(min(idle, key=lambda s: s.last_used))
                continue
            in_use = [s for s in others if s.users > 0]
            if in_use and not any(s.draining for s in others):
                min(in_use, key=lambda s: s.last_used).draining = True
            async with self._condition():
                await self._condition().wait()
        slot.room = True  # no await since the check: the place is this load's

    def _resident(self, slot: Slot) -> int:
        """Models loaded or closing, and loads past _make_room (loads still waiting for room hold none)."""
        return sum(1 for s in self.catalog.slots()
                   if s is not slot and (s.model is not None or s.room or s.closing))

    def _release(self, slot: Slot, keep_alive: float | None) -> None:
        loop = self._loop
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if not on_loop:  # a release from a worker thread: the slots are only touched on the event loop
            loop.call_soon_threadsafe(self._release, slot, keep_alive)
            return
        slot.users -= 1
        slot.last_used = time.monotonic()
        if slot.users == 0 and slot.model is not None:
            self._schedule_expiry(slot, loop)
        loop.create_task(self._notify())

    def _schedule_expiry(self, slot: Slot, loop: asyncio.AbstractEventLoop) -> None:
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None
        keep = slot.keep_alive
        if slot.draining or keep == 0:
            slot.expires_at = time.time()
            loop.create_task(self._unload(slot))
        elif keep is None:
            slot.expires_at = None
        else:
            slot.expires_at = time.time() + keep
            slot.timer = loop.call_later(keep, self._expire, slot)

    def _expire(self, slot: Slot) -> None:
        slot.timer = None
        if slot.users == 0 and slot.model is not None:
            logger.info("%s: keep-alive over", slot.alias)
            asyncio.get_running_loop().create_task(self._unload(slot))

    async def _unload(self, slot: Slot) -> None:
        model, slot.model = slot.model, None
        slot.expires_at, slot.draining = None, False
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None
        if model is not None:
            status(logger, "unloading %s", slot.alias)
            slot.closing += 1  # still holds its memory until the runner has gone: counts under --max-loaded
            try:
                await asyncio.to_thread(self._close_engine, model)
            finally:
                slot.closing -= 1
        await self._notify()

    def _close_late(self, future: concurrent.futures.Future | asyncio.Future) -> None:
        if not future.cancelled() and future.exception() is None:
            self._close_engine(future.result())

    @staticmethod
    def _close_engine(model: ServedModel) -> None:
        try:
            model.engine.close()
        except Exception as exc:  # noqa: BLE001 - closing the others matters more
            logger.warning("closing %s: %s", model.alias, exc)


def _size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None
