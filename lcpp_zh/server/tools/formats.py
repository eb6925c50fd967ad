"""Tool-call formats: how a model is told about tools, how its calls are written, and how they are parsed.

A chat template that knows tools (Hermes/Qwen `<tool_call>`, Llama 3.x JSON, Mistral `[TOOL_CALLS]`) is
given the tools and the conversation's calls and results and writes them itself; the model's reply is parsed
in that template's format. Any other template (Atom, Llama2-Chinese, ChatML, SmolLM2) gets the generic format:

    system message, after its own text:
        Tools 工具:
        {"name":"get_weather","description":"...","parameters":{...JSON schema...}}   (one line per tool)
        To call tools, reply only with one line per call 调用工具时只回复:
        <tool_call>{"name": "TOOL_NAME", "arguments": {ARGUMENTS}}</tool_call>
    an assistant turn that called tools:  its text, then one <tool_call>{...}</tool_call> line per call
    tool results (consecutive ones joined), as a user turn:
        <tool_response>{"name": "get_weather", "content": "..."}</tool_response>   (one line per result)

The calls in a reply are the `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks whose name is
a tool of the request; the text around them is the message content. Nothing here samples or builds grammars.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToolFormat:
    """A way of writing tool calls. `jinja`: the chat template renders tools, calls and results itself.
    `open`/`close`: the text around one call (close "" : the call runs to the end of the reply)."""

    name: str
    jinja: bool
    open: str
    close: str
    args_key: str = "arguments"


GENERIC = ToolFormat("generic", jinja=False, open="<tool_call>", close="</tool_call>")
HERMES = ToolFormat("hermes", jinja=True, open="<tool_call>", close="</tool_call>")
LLAMA3 = ToolFormat("llama3", jinja=True, open="", close="", args_key="parameters")
MISTRAL = ToolFormat("mistral", jinja=True, open="[TOOL_CALLS]", close="")

# Short on purpose: it is in every prompt (a tiny model's whole context is 512 tokens).
GENERIC_INTRO = "Tools 工具:\n"
GENERIC_HOWTO = ("To call tools, reply only with one line per call 调用工具时只回复:\n"
                 '<tool_call>{"name": "TOOL_NAME", "arguments": {ARGUMENTS}}</tool_call>')


def detect_format(template_source: str) -> ToolFormat:
    """The tool format of a chat template, from the markers it writes; generic when it knows no tools."""
    if "tools" not in template_source:
        return GENERIC
    if "<tool_call>" in template_source:
        return HERMES
    if "[TOOL_CALLS]" in template_source:
        return MISTRAL
    if "<|start_header_id|>" in template_source:
        return LLAMA3
    return GENERIC


@dataclass(frozen=True)
class Call:
    """One parsed tool call; `arguments` is JSON text, as OpenAI sends it."""

    name: str
    arguments: str
    id: str

    def openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def call_text(fmt: ToolFormat, name: str, arguments: Any) -> str:
    """A call as the model writes it in the generic format (and Hermes's)."""
    args = arguments if isinstance(arguments, dict) else _loads_object(arguments) or {}
    body = json.dumps({"name": name, fmt.args_key: args}, ensure_ascii=False)
    return f"{fmt.open}{body}{fmt.close}"


def generic_system(tools: list[dict[str, Any]]) -> str:
    """The tool instructions of the generic format (appended to the system message)."""
    # Compact JSON: the tools cost prompt tokens on every turn (a tiny model's context is 512).
    lines = [json.dumps({k: v for k, v in tool.items() if v != ""}, ensure_ascii=False, separators=(",", ":"))
             for tool in tools]
    return GENERIC_INTRO + "\n".join(lines) + "\n" + GENERIC_HOWTO


def generic_result(name: str | None, content: str) -> str:
    return "<tool_response>" + json.dumps({"name": name or "", "content": content}, ensure_ascii=False) + "</tool_response>"


def _loads_object(text: Any) -> dict[str, Any] | None:
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


_DECODER = json.JSONDecoder()


def _call_from(value: Any, fmt: ToolFormat, names: frozenset[str]) -> Call | None:
    """A Call from a decoded JSON value, if it is one: a known name and object arguments."""
    if not isinstance(value, dict) or value.get("name") not in names:
        return None
    args = value.get(fmt.args_key, value.get("arguments", value.get("parameters", {})))
    if isinstance(args, str):  # some models write the arguments as a JSON string, as OpenAI's wire does
        args = _loads_object(args)
    if not isinstance(args, dict):
        return None
    return Call(value["name"], json.dumps(args, ensure_ascii=False), new_call_id())


def parse_block(fmt: ToolFormat, body: str, names: frozenset[str]) -> list[Call] | None:
    """The calls in the text of one call block (after `open`, before `close`); None when it holds none."""
    body = body.strip()
    try:
        value, end = _DECODER.raw_decode(body)
    except ValueError:
        return None
    values = value if isinstance(value, list) and fmt is MISTRAL else [value]
    if body[end:].strip().strip(";"):  # Llama 3 may separate several calls with `;`
        rest = parse_block(fmt, body[end:].strip().lstrip(";"), names) if fmt is LLAMA3 else None
        if rest is None:
            return None
        return [*(c for v in values if (c := _call_from(v, fmt, names))), *rest]
    calls = [_call_from(v, fmt, names) for v in values]
    return None if not calls or any(c is None for c in calls) else calls  # type: ignore[misc]


def parse_reply(fmt: ToolFormat, text: str, names: frozenset[str]) -> tuple[str | None, list[Call]]:
    """The content (None when empty) and the calls of a whole reply."""
    if not fmt.close:
        stripped = text.strip()
        body = stripped[len(fmt.open):] if fmt.open and stripped.startswith(fmt.open) else stripped
        if fmt is LLAMA3 and body.startswith("<|python_tag|>"):
            body = body[len("<|python_tag|>"):]
        calls = parse_block(fmt, body, names) if body[:1] in "{[" else None
        return (None, calls) if calls else (text or None, [])
    content, calls, pos = [], [], 0
    pattern = re.compile(re.escape(fmt.open) + r"(.*?)(?:" + re.escape(fmt.close) + r"|\Z)", re.DOTALL)
    for match in pattern.finditer(text):
        block = parse_block(fmt, match.group(1), names)
        if block is None:
            continue
        content.append(text[pos:match.start()])
        calls += block
        pos = match.end()
    content.append(text[pos:])
    joined = "".join(content).strip() if calls else text
    return joined or None, calls
