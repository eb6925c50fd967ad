"""Bridge engine streams to HTTP: server-sent events for streaming requests, collection for the others.

The engine thread produces events; we consume them with the stream's async iterator so the event loop never
blocks. Whatever ends the consumer first (client disconnect, which cancels the response task, or an error)
cancels the engine stream in a `finally`, which frees its slot at the engine's next step.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from lcpp_zh.runtime.stream import Finished
from lcpp_zh.server.httperrors import ApiError, sse_error
from lcpp_zh.server.metrics import Metrics

logger = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
# How often a non-streaming request checks that its client is still there.
_DISCONNECT_POLL_S = 0.25


@dataclass
class Outcome:
    """What a finished engine stream produced."""

    text: str
    reason: str
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None
    finished: Finished | None = None  # the engine's last event: timings, generated token ids

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


def is_finished(event: Any) -> bool:
    return isinstance(event, Finished)


async def engine_batches(stream: Any, metrics: Metrics, alias: str,
                         min_interval_s: float = 0.0) -> AsyncIterator[list[Any]]:
    """The stream's events in lists (see Stream.batches); cancels the stream if the consumer stops early
    and records the finish in metrics."""
    finished = False
    try:
        async for events in stream.batches(min_interval_s):
            if is_finished(events[-1]):
                finished = True
                metrics.observe_finished(alias, events[-1])
            yield events
    finally:
        if not finished:
            stream.cancel()
            metrics.observe_cancelled(alias)


def openai_reason(reason: str) -> str:
    return "length" if reason == "length" else "stop"


async def _consume(stream: Any, metrics: Metrics, alias: str) -> Outcome:
    parts: list[str] = []
    async for events in engine_batches(stream, metrics, alias):
        parts.extend(event.text for event in events if not is_finished(event))
        end = events[-1]
        if is_finished(end):
            return Outcome("".join(parts), end.reason, end.prompt_tokens, end.completion_tokens,
                           getattr(end, "error", None), end)
    raise ApiError(500, "engine stream ended without a finish event")


async def collect(stream: Any, request: Request, metrics: Metrics, alias: str) -> Outcome:
    """Run a stream to its end for a non-streaming request; a client that goes away cancels it."""
    task = asyncio.ensure_future(_consume(stream, metrics, alias))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
            if done:
                break
            if await request.is_disconnected():
                logger.info("client went away; cancelling its request")
                task.cancel()
                break
    finally:
        if not task.done():
            task.cancel()
    if task.cancelled():
        raise ApiError(499, "client closed the request")
    outcome = task.result()
    if outcome.reason == "error":
        raise ApiError(500, f"generation failed: {outcome.error}", code="engine_error")
    return outcome


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


async def sse_events(stream: Any, metrics: Metrics, alias: str, *,
                     chunk: Callable[[str | None, str | None], dict[str, Any]],
                     usage_chunk: Callable[[dict[str, int]], dict[str, Any]] | None,
                     first: dict[str, Any] | None = None, min_interval_s: float = 0.0) -> AsyncIterator[bytes]:
    """OpenAI-style SSE: optional first chunk, text chunks, a finish chunk, usage, [DONE].

    `chunk(text, finish_reason)` builds a chunk; `usage_chunk` is given when stream_options.include_usage.
    Text that arrived while the previous chunk was being sent, or within `min_interval_s` of it, goes out as
    one chunk: one event-loop wake-up and one client parse for several tokens.
    """
    if first is not None:
        yield _sse(first)
    async for events in engine_batches(stream, metrics, alias, min_interval_s):
        end = events[-1]
        text = "".join(event.text for event in events if not is_finished(event))
        if text:
            yield _sse(chunk(text, None))
        if not is_finished(end):
            continue
        if end.reason == "error":
            yield sse_error(500, f"generation failed: {getattr(end, 'error', None)}")
        elif end.reason != "cancelled":
            yield _sse(chunk(None, openai_reason(end.reason)))
            if usage_chunk is not None:
                total = end.prompt_tokens + end.completion_tokens
                yield _sse(usage_chunk({"prompt_tokens": end.prompt_tokens,
                                        "completion_tokens": end.completion_tokens, "total_tokens": total}))
        yield DONE
        return


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class EngineStreamResponse(StreamingResponse):
    """An SSE response that cancels its engine stream however the response ends.

    The generator's own `finally` does not run when the client leaves before the first chunk is pulled, so
    the response itself cancels the stream too (cancelling a finished stream does nothing).
    """

    def __init__(self, events: AsyncIterator[bytes], stream: Any, media_type: str = "text/event-stream") -> None:
        super().__init__(events, media_type=media_type, headers=SSE_HEADERS)
        self._engine_stream = stream

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._engine_stream.cancel()
