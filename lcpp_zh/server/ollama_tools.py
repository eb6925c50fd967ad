"""Ollama's /api/chat messages and tools as the OpenAI ChatRequest that lcpp_zh.server.tools plans, and a
parsed reply back in Ollama's shape (tool call arguments as an object, no call ids).

Ollama's tool results name the function (`tool_name`) instead of answering a call id: each result is matched
to the oldest open call of that name (else of any name), which is how Ollama's own templates pair them.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import ValidationError

from lcpp_zh.server import tools
from lcpp_zh.server.httperrors import ApiError
from lcpp_zh.server.ollama_schemas import OllamaChatRequest
from lcpp_zh.server.schemas import ChatRequest

logger = logging.getLogger(__name__)


def _messages(body: OllamaChatRequest) -> list[dict[str, Any]]:
    """OpenAI messages: assistant tool calls get ids, tool results the id of the call they answer."""
    out: list[dict[str, Any]] = []
    open_calls: list[tuple[str, str]] = []  # (id, name) of calls not answered yet, oldest first
    for i, message in enumerate(body.messages):
        entry: dict[str, Any] = {"role": message.role, "content": message.content or ""}
        if message.tool_calls:
            calls = []
            for j, call in enumerate(message.tool_calls):
                call_id = f"call_{i}_{j}"
                open_calls.append((call_id, call.function.name))
                calls.append({"id": call_id, "type": "function",
                              "function": {"name": call.function.name, "arguments": call.function.arguments}})
            entry["tool_calls"] = calls
        if message.role == "tool":
            named = [c for c in open_calls if c[1] == message.tool_name]
            match = (named or open_calls or [None])[0]
            if match is None:  # a result without a call before it: the template still shows it
                entry.update(tool_call_id=f"call_{i}", name=message.tool_name)
            else:
                open_calls.remove(match)
                entry.update(tool_call_id=match[0], name=message.tool_name or match[1])
        out.append(entry)
    return out


def openai_chat(body: OllamaChatRequest, response_format: dict[str, Any] | None) -> ChatRequest:
    """The ChatRequest /v1's chat path plans (messages, tools, and the format, which tools cannot be combined
    with); a field it refuses is a 400 naming the Ollama field."""
    try:
        return ChatRequest.model_validate({"messages": _messages(body), "tools": body.tools or None,
                                           "response_format": response_format})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ApiError(400, f"{where}: {error['msg']}", param=where) from None


def ollama_message(plan: tools.ToolPlan | None, text: str) -> dict[str, Any]:
    """The assistant message of a finished reply, its tool calls (if any) with their arguments as objects."""
    message, _ = tools.reply_message(plan, text, "stop")
    out: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
    calls = message.get("tool_calls")
    if calls:
        out["tool_calls"] = [{"function": {"name": c["function"]["name"],
                                           "arguments": _arguments(c["function"]["arguments"])}} for c in calls]
    return out


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:  # the grammar makes this rare; the text is kept rather than lost
        return {"_raw": text}
    return value if isinstance(value, dict) else {"value": value}
