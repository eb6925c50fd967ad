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
        self._async: tuple[asyncio.AbstractEventLoop, asyncio.Queue] | None = None
        self.cancelled = threading.Event()
        self.done = False

    # --- producer side (engine thread) ---
    def put(self, event: Event) -> None:
        with self._lock:
            if self.done:
                return
            if isinstance(event, Finished):
                self.done = True
            if self._async is not None:
                loop, queue = self._async
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, event)
                except RuntimeError:  # the consumer's loop is closed: nobody listens any more
                    self.cancelled.set()
            else:
                self._events.append(event)
                self._cond.notify_all()

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

    async def aiter(self) -> AsyncIterator[Event]:
        """Async iteration for asyncio consumers; events already produced come first."""
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            while self._events:
                queue.put_nowait(self._events.popleft())
            self._async = (asyncio.get_running_loop(), queue)
        while True:
            event = await queue.get()
            yield event
            if isinstance(event, Finished):
                return

    def text(self) -> tuple[str, Finished]:
        """Run to the end: the whole text and the Finished event."""
        parts: list[str] = []
        for event in self:
            if isinstance(event, Finished):
                return "".join(parts), event
            parts.append(event.text)
        raise AssertionError("unreachable: a stream always ends with Finished")
