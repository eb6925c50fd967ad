"""Tool calling for the chat routes: one entry point from a request's tools to prompt, grammar and parsed reply.

`plan_tools` checks the tools and tool_choice and picks the format (formats.py) and grammar (grammar.py);
`chat_messages` turns OpenAI messages (assistant tool_calls, `tool` results) into what the template renders;
`reply_message` parses a finished reply and `ToolCallStream` a streamed one. /v1/chat/completions uses it,
and any other chat front (Ollama's /api/chat) gets tools by mapping its fields onto ChatRequest's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lcpp_zh.errors import EngineError
from lcpp_zh.server.httperrors import ApiError
from lcpp_zh.server.schemas import ChatMessage, ChatRequest
from lcpp_zh.server.tools.formats import (
    GENERIC,
    Call,
    ToolFormat,
    call_text,
    detect_format,
    generic_result,
    generic_system,
    new_call_id,
    parse_reply,
)
from lcpp_zh.server.tools.grammar import tool_grammar
from lcpp_zh.server.tools.streaming import ToolCallStream, tool_sse_events

logger = logging.getLogger(__name__)

__all__ = ["ToolPlan", "plan_tools", "chat_messages", "reply_message", "ToolCallStream", "tool_sse_events"]

# OpenAI's "developer" role is the newer name of "system".
_ROLE_MAP = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
_EMPTY_PARAMETERS = {"type": "object", "properties": {}}


@dataclass
class ToolPlan:
    """What a request's tools mean for its prompt, sampling and reply. `choice`: auto, none, required, or
    the name of the one function the model must call."""

    format: ToolFormat
    tools: list[dict[str, Any]]
    choice: str = "auto"
    parallel: bool = True
    grammar: str | None = None
    triggers: list[str] = field(default_factory=list)

    @property
    def calling(self) -> bool:
        """Whether the model is told about tools and its reply parsed for calls."""
        return self.choice != "none"

    @property
    def names(self) -> frozenset[str]:
        return frozenset(t["name"] for t in self.tools)

    def jinja_tools(self) -> list[dict[str, Any]] | None:
        """The tools as a template that knows them takes them (OpenAI's shape)."""
        if not (self.calling and self.format.jinja):
            return None
        return [{"type": "function", "function": tool} for tool in self.tools]


def _choice(body: ChatRequest, names: Sequence[str]) -> str:
    choice = body.tool_choice or "auto"
    if isinstance(choice, str):
        return choice
    name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
    if not isinstance(name, str):
        raise ApiError(400, 'tool_choice must be "auto", "none", "required" or '
                            '{"type": "function", "function": {"name": ...}}', param="tool_choice")
    if name not in names:
        raise ApiError(400, f"tool_choice names {name!r}, which is not among the tools", param="tool_choice")
    return name


def plan_tools(body: ChatRequest, template_source: str, engine: Any = None) -> ToolPlan | None:
    """The plan for a request's tools (None without any), checked: a bad tool_choice, duplicate names, a
    schema the grammar cannot express, or tools combined with another grammar are a 400. With `engine`,
    the grammar is trial-compiled for its vocabulary. Slow for many tools: call it off the event loop."""
    if not body.tools:
        if body.tool_choice not in (None, "auto", "none"):
            raise ApiError(400, "tool_choice needs tools", param="tool_choice")
        return None
    tools = [{"name": t.function.name, "description": t.function.description or "",
              "parameters": t.function.parameters or _EMPTY_PARAMETERS} for t in body.tools]
    names = [t["name"] for t in tools]
    if len(set(names)) != len(names):
        raise ApiError(400, "tools: function names must be unique", param="tools")
    plan = ToolPlan(detect_format(template_source), tools, _choice(body, names), body.parallel_tool_calls is not False)
    if not plan.calling:
        return plan
    forced = [t for t in tools if t["name"] == plan.choice] or tools
    try:
        grammar = tool_grammar(plan.format, forced, lazy=plan.choice == "auto", parallel=plan.parallel)
        if grammar is not None and engine is not None:
            engine.check_grammar(grammar.text)
    except EngineError as exc:
        raise ApiError(400, f"tools: {exc}", param="tools") from exc
    if grammar is not None:
        if body.grammar or (body.response_format is not None and body.response_format.type != "text"):
            raise ApiError(400, "tools cannot be combined with grammar or response_format; use tool_choice "
                                '"none" for those', param="tools")
        plan.grammar, plan.triggers = grammar.text, list(grammar.triggers)
    return plan


def _message_text(message: ChatMessage, i: int) -> str:
    try:
        return message.text()
    except ValueError as exc:
        raise ApiError(400, f"messages[{i}]: {exc}", param=f"messages.{i}.content") from exc


def chat_messages(messages: Sequence[ChatMessage], plan: ToolPlan | None) -> list[dict[str, Any]]:
    """The conversation as the chat template renders it. Without tools in the format's template, calls and
    results become text in the generic format, and the tool instructions join the system message."""
    fmt = plan.format if plan else GENERIC
    call_names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role, text = _ROLE_MAP[message.role], _message_text(message, i)
        if role == "tool":
            if not message.tool_call_id:
                raise ApiError(400, f"messages[{i}]: a tool message needs tool_call_id", param=f"messages.{i}.tool_call_id")
            name = message.name or call_names.get(message.tool_call_id)
            if fmt.jinja:
                out.append({"role": "tool", "content": text, "tool_call_id": message.tool_call_id, "name": name or ""})
            elif out and out[-1].get("tool_results"):  # consecutive results: one user turn
                out[-1]["content"] += "\n" + generic_result(name, text)
            else:
                out.append({"role": "user", "content": generic_result(name, text), "tool_results": True})
            continue
        entry: dict[str, Any] = {"role": role, "content": text}
        if role == "assistant" and message.tool_calls:
            calls = []
            for call in message.tool_calls:
                call_id = call.id or new_call_id()
                call_names[call_id] = call.function.name
                calls.append({"id": call_id, "type": "function", "function": {
                    "name": call.function.name, "arguments": _arguments(call.function.arguments, i)}})
            if fmt.jinja:
                entry["tool_calls"] = calls
            else:
                lines = [call_text(fmt, c["function"]["name"], c["function"]["arguments"]) for c in calls]
                entry["content"] = "\n".join([text, *lines] if text else lines)
        out.append(entry)
    if plan is not None and plan.calling and not fmt.jinja:
        # A named choice: only that tool is shown (the others cannot be called; prompt tokens are dear).
        offered = [t for t in plan.tools if t["name"] == plan.choice] or plan.tools
        _add_instructions(out, generic_system(offered))
    return [{k: v for k, v in m.items() if k != "tool_results"} for m in out]


def _arguments(arguments: str | dict[str, Any], i: int) -> dict[str, Any]:
    """A call's arguments as an object (templates write them with tojson)."""
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments or "{}")
    except ValueError as exc:
        raise ApiError(400, f"messages[{i}]: tool call arguments are not JSON: {exc}",
                       param=f"messages.{i}.tool_calls") from exc
    if not isinstance(value, dict):
        raise ApiError(400, f"messages[{i}]: tool call arguments must be a JSON object", param=f"messages.{i}.tool_calls")
    return value


def _add_instructions(messages: list[dict[str, Any]], instructions: str) -> None:
    if messages and messages[0]["role"] == "system":
        base = messages[0]["content"]
        messages[0]["content"] = f"{base}\n\n{instructions}" if base else instructions
    else:
        messages.insert(0, {"role": "system", "content": instructions})


def check_control_texts(plan: ToolPlan | None, messages: Sequence[dict[str, Any]], engine: Any) -> None:
    """400 when tool definitions or call arguments hold a control token's text (`<|im_end|>`): a template
    that knows tools writes them as its own text, where such a text would become the control token and could
    forge a turn (message contents are protected; these are not)."""
    if plan is None or not plan.format.jinja:
        return
    blob = json.dumps([plan.jinja_tools(), [m.get("tool_calls") for m in messages]], ensure_ascii=False)
    for special in engine.special_tokens():
        if special.control and special.text and special.text in blob:
            raise ApiError(400, f"tools or tool calls contain the control-token text {special.text!r}", param="tools")


def reply_message(plan: ToolPlan | None, text: str, reason: str) -> tuple[dict[str, Any], str]:
    """The assistant message and finish_reason of a finished reply: tool calls when it holds any."""
    calls: list[Call] = []
    content: str | None = text
    if plan is not None and plan.calling:
        content, calls = parse_reply(plan.format, text, plan.names)
        if not plan.parallel:
            calls = calls[:1]
    if not calls:
        return {"role": "assistant", "content": text}, reason
    return {"role": "assistant", "content": content, "tool_calls": [c.openai() for c in calls]}, "tool_calls"


def stream_parser(plan: ToolPlan | None) -> ToolCallStream | None:
    """An incremental parser for a streamed reply that may hold calls (None: plain text streaming)."""
    return ToolCallStream(plan.format, plan.names) if plan is not None and plan.calling else None
