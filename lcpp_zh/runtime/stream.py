"""The events a generation produces and the Stream that carries them from the engine thread to a consumer.

The engine thread pushes; any thread iterates (`for ev in stream`) and asyncio code uses
`async for ev in stream.aiter()`, which never blocks the event loop. No llama.cpp here.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Literal

logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class TextDelta:
    """Complete UTF-8 text (never a split character, never part of a stop string) and the tokens it took."""

    text: str
    n_tokens: int


@dataclass(frozen=True)
class Finished:
    """The last event of every stream."""

    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    ttft_s: float
    tokens_per_s: float
    error: str | None = None
    stop: str | None = None  # the stop string that ended it, if any
    tokens: tuple[int, ...] = ()  # the generated token ids (EOS included when it ended the text)
    draft_tokens: int = 0     # speculative decoding: tokens drafted for this answer
    draft_accepted: int = 0   # of those, the ones the model confirmed

    @property
    def evaluated_tokens(self) -> int:
        """Prompt tokens actually run through the model (the rest came from the prefix cache)."""
        return self.prompt_tokens - self.cached_tokens


Event = TextDelta | Finished


class Stream:
    """Events of one request, in order, ending with exactly one Finished."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._events: collections.deque[Event] = collections.deque()
        # An asyncio consumer waiting on a future: (loop, future, wake on any event, or only on Finished).
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future, bool] | None = None
        self.cancelled = threading.Event()
        self.done = False

    # --- producer side (engine thread) ---
    def put(self, event: Event) -> None:
        with self._lock:
            if self.done:
                return
            if isinstance(event, Finished):
                self.done = True
            self._events.append(event)
            self._cond.notify_all()
            waiter = self._waiter
            if waiter is None or not (waiter[2] or self.done):
                return
            self._waiter = None
        loop, future, _ = waiter
        try:
            loop.call_soon_threadsafe(_wake, future)
        except RuntimeError:  # the consumer's loop is closed: nobody listens any more
            self.cancelled.set()

    # --- consumer side ---
    def cancel(self) -> None:
        """Stop generating at the engine's next step; a Finished(reason="cancelled") still arrives."""
        self.cancelled.set()

    def get(self, timeout: float | None = None) -> Event:
        with self._cond:
            if not self._cond.wait_for(lambda: self._events, timeout):
                raise TimeoutError("no event from the engine in time")
            return self._events.popleft()

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self.get()
            yield event
            if isinstance(event, Finished):
                return

    async def batches(self, min_interval_s: float = 0.0) -> AsyncIterator[list[Event]]:
        """Async iteration in lists of the events that arrived since the last list; never blocks the loop.

        After each list the consumer rests (at most `min_interval_s`) before taking the next, so a fast
        generation reaches it in fewer, larger lists; only the Finished event cuts a rest short. The engine
        thread wakes the loop only for a consumer that waits, so a resting one costs it no wake-up at all.
        """
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                events = list(self._events)
                self._events.clear()
                if not events:
                    future = loop.create_future()
                    self._waiter = (loop, future, True)
            if not events:
                await future
                continue
            yield events
            if isinstance(events[-1], Finished):
                return
            if min_interval_s > 0:
                await self._rest(loop, min_interval_s)

    async def _rest(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        """Wait until the next multiple of `interval` on the loop's clock, or until the Finished event.

        Every stream of a loop rests until the same instants, so with many streams the loop wakes once per
        interval for all of them, not once per stream at scattered times (each wake-up takes a core away
        from llama.cpp's threads for a moment).
        """
        with self._lock:
            if self.done:  # the end is already queued: no reason to wait
                return
            future = loop.create_future()
            self._waiter = (loop, future, False)
        try:
            await asyncio.wait({future}, timeout=interval - loop.time() % interval)
        finally:
            with self._lock:
                if self._waiter is not None and self._waiter[1] is future:
                    self._waiter = None

    async def aiter(self) -> AsyncIterator[Event]:
        """Async iteration one event at a time, for asyncio consumers."""
        async for events in self.batches():
            for event in events:
                yield event

    def text(self) -> tuple[str, Finished]:
        """Run to the end: the whole text and the Finished event."""
        parts: list[str] = []
        for event in self:
            if isinstance(event, Finished):
                return "".join(parts), event
            parts.append(event.text)
        raise AssertionError("unreachable: a stream always ends with Finished")


def _wake(future: asyncio.Future) -> None:
    if not future.done():  # a consumer that went away cancelled it
        future.set_result(None)
