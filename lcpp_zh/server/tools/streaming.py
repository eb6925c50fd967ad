"""Tool calls in a streamed reply: an incremental parser over text deltas, and the SSE chunks OpenAI sends.

Text outside calls streams as `delta.content` as it comes (a possible start of `<tool_call>` is held back
until it is ruled out); a call is sent when its block is complete and parses, as OpenAI's deltas: id, type and
name first with empty arguments, then the arguments in pieces, then `finish_reason: "tool_calls"`. Formats
whose call runs to the end of the reply (Llama 3, Mistral) hold a reply that starts like a call to the end.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from lcpp_zh.server.httperrors import sse_error
from lcpp_zh.server.streaming import DONE, engine_batches, is_finished, openai_reason
from lcpp_zh.server.tools.formats import LLAMA3, Call, ToolFormat, parse_block, parse_reply

logger = logging.getLogger(__name__)

# Arguments go out in pieces of this many characters, as OpenAI streams them.
ARGUMENT_PIECE_CHARS = 32


class ToolCallStream:
    """Feed text deltas, get ("content", text) and ("call", Call) events; `calls` are those sent so far."""

    def __init__(self, fmt: ToolFormat, names: frozenset[str]) -> None:
        self.fmt = fmt
        self.names = names
        self.calls: list[Call] = []
        self._buf = ""
        self._in_call = False
        self._whole = False  # Llama 3 / Mistral: the reply is a call, held to its end
        self._decided = bool(fmt.close)  # close-delimited formats look for calls anywhere
        self._space = ""  # whitespace held back: dropped between calls, sent before more text

    def feed(self, text: str) -> list[tuple[str, Any]]:
        self._buf += text
        if not self._decided:
            stripped = self._buf.lstrip()
            markers = [m for m in (self.fmt.open, "{", "[", "<|python_tag|>" if self.fmt is LLAMA3 else "") if m]
            if any(stripped.startswith(m) for m in markers):
                self._decided = self._whole = True
            elif not stripped or any(m.startswith(stripped) for m in markers):
                return []  # could still become a call
            else:
                self._decided = True
        if self._whole:
            return []
        if not self.fmt.close:
            out, self._buf = self._buf, ""
            return self._content(out)
        return self._scan()

    def _scan(self) -> list[tuple[str, Any]]:
        events: list[tuple[str, Any]] = []
        while True:
            if self._in_call:
                end = self._buf.find(self.fmt.close)
                if end < 0:
                    return events
                block, self._buf = self._buf[:end], self._buf[end + len(self.fmt.close):]
                self._in_call = False
                events += self._block(block, closed=True)
                continue
            start = self._buf.find(self.fmt.open)
            if start >= 0:
                events += self._content(self._buf[:start])
                self._buf, self._in_call = self._buf[start + len(self.fmt.open):], True
                continue
            keep = _partial_suffix(self._buf, self.fmt.open)
            events += self._content(self._buf[:len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep:]
            return events

    def _block(self, block: str, *, closed: bool) -> list[tuple[str, Any]]:
        calls = parse_block(self.fmt, block, self.names)
        if calls is None:
            return self._content(self.fmt.open + block + (self.fmt.close if closed else ""))
        self.calls += calls
        self._space = ""
        return [("call", call) for call in calls]

    def _content(self, text: str) -> list[tuple[str, Any]]:
        if not text:
            return []
        if not text.strip():
            self._space += text
            return []
        out = self._space + text
        if self.calls:  # text after a call: the non-streamed reply strips it too
            out = out.lstrip()
        body = out.rstrip()  # trailing whitespace waits: a call after it drops it, as the whole reply does
        self._space = out[len(body):]
        return [("content", body)] if body else []

    def finish(self) -> list[tuple[str, Any]]:
        """Events for what is still held when the reply ends."""
        rest, self._buf = self._buf, ""
        if self._whole:
            content, calls = parse_reply(self.fmt, rest, self.names)
            self.calls += calls
            return [("call", c) for c in calls] if calls else self._content(content or "")
        if self._in_call:  # a block the reply ended in (Hermes models may leave out the close)
            self._in_call = False
            return self._block(rest, closed=False)
        events = self._content(rest)
        if not self.calls and self._space:
            events.append(("content", self._space))
        return events


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that begins `marker` (a marker may be split over deltas)."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def call_deltas(call: Call, index: int) -> list[dict[str, Any]]:
    """The `delta.tool_calls` items of one call: id and name first, then the arguments in pieces."""
    head = {"index": index, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
    args = call.arguments
    pieces = [args[i:i + ARGUMENT_PIECE_CHARS] for i in range(0, len(args), ARGUMENT_PIECE_CHARS)]
    return [head, *({"index": index, "function": {"arguments": p}} for p in pieces)]


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


async def tool_sse_events(stream: Any, metrics: Any, alias: str, parser: ToolCallStream, *, chunk_base: dict[str, Any],
                          include_usage: bool, min_interval_s: float = 0.0) -> AsyncIterator[bytes]:
    """server.streaming.sse_events for a request with tools: content and tool-call deltas, finish, usage."""
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse({**chunk_base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                "finish_reason": finish}]})

    def deltas(events: list[tuple[str, Any]]) -> list[bytes]:
        out = []
        for kind, value in events:
            if kind == "content":
                out.append(chunk({"content": value}))
            else:
                index = parser.calls.index(value)
                out += [chunk({"tool_calls": [item]}) for item in call_deltas(value, index)]
        return out

    yield chunk({"role": "assistant", "content": ""})
    async for events in engine_batches(stream, metrics, alias, min_interval_s):
        end = events[-1]
        for item in deltas(parser.feed("".join(e.text for e in events if not is_finished(e)))):
            yield item
        if not is_finished(end):
            continue
        if end.reason == "error":
            yield sse_error(500, f"generation failed: {getattr(end, 'error', None)}")
        elif end.reason != "cancelled":
            for item in deltas(parser.finish()):
                yield item
            yield chunk({}, "tool_calls" if parser.calls else openai_reason(end.reason))
            if include_usage:
                usage = {"prompt_tokens": end.prompt_tokens, "completion_tokens": end.completion_tokens,
                         "total_tokens": end.prompt_tokens + end.completion_tokens}
                yield _sse({**chunk_base, "choices": [], "usage": usage})
        yield DONE
        return
