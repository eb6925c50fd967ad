"""Grammars for tool calls: the tools' JSON schemas become one GBNF grammar whose calls always parse and fit.

Each tool's `parameters` is checked against lcpp_zh.runtime.grammar's schema limits, then llama-cpp-python's
JSON-schema converter (llama.cpp's json-schema-to-grammar) writes the rules of one call object,
`{"name": <one of the names>, "arguments": <that tool's schema>}`, and the format's wrapping is added around
it. For tool_choice `auto` the grammar is lazy: it describes what follows the trigger (`<tool_call>`), so
the model writes text or a call, as llama-server does. Limits and trial compiles are the caller's.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from typing import Any

from lcpp_zh.errors import EngineError
from lcpp_zh.runtime.grammar import MAX_SCHEMA_BYTES, check_grammar_text, check_schema
from lcpp_zh.server.tools.formats import GENERIC, HERMES, LLAMA3, MISTRAL, ToolFormat

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToolGrammar:
    """GBNF text; with triggers, it applies after the first trigger generated (lazy)."""

    text: str
    triggers: tuple[str, ...] = ()


def _call_schema(tools: list[dict[str, Any]], args_key: str) -> dict[str, Any]:
    variants = [{"type": "object",
                 "properties": {"name": {"const": tool["name"]}, args_key: tool["parameters"]},
                 "required": ["name", args_key], "additionalProperties": False} for tool in tools]
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def _call_rules(tools: list[dict[str, Any]], args_key: str) -> tuple[str, str]:
    """Rules for one call object and the name of its rule (`call`, unless a schema's $defs took that name).
    EngineError for a schema the converter cannot use."""
    from llama_cpp.llama_grammar import SchemaConverter

    for tool in tools:
        try:
            check_schema(tool["parameters"])
        except EngineError as exc:
            raise EngineError(f"tool {tool['name']!r}: {exc}") from exc
    size = len(json.dumps([tool["parameters"] for tool in tools]))
    if size > MAX_SCHEMA_BYTES:
        raise EngineError(f"the tools' schemas are {size} bytes together; at most {MAX_SCHEMA_BYTES} are accepted")
    converter = SchemaConverter(prop_order={"name": 0, args_key: 1}, allow_fetch=False, dotall=False,
                                raw_pattern=False)
    try:
        # Each schema's `#/$defs/...` refs point into that schema, so they are resolved before it is nested
        # into the call object (resolve_refs rewrites them in place: on a copy).
        resolved = [{**tool, "parameters": converter.resolve_refs(copy.deepcopy(tool["parameters"]), f"tool{i}")}
                    for i, tool in enumerate(tools)]
        call = converter.visit(_call_schema(resolved, args_key), "call")
    except Exception as exc:  # noqa: BLE001 - asserts, KeyErrors, RecursionError: a schema it cannot use
        raise EngineError(f"a tool's parameters schema cannot be turned into a grammar: "
                          f"{exc or type(exc).__name__}") from exc
    return converter.format_grammar(), call


def tool_grammar(fmt: ToolFormat, tools: list[dict[str, Any]], *, lazy: bool, parallel: bool) -> ToolGrammar | None:
    """The grammar of the calls `tools` allow in format `fmt`: forced (tool_choice required or a named
    tool) or lazy (auto). None where the format has no trigger for a lazy grammar (Llama 3, Mistral: their
    replies are parsed as they come)."""
    rules, call = _call_rules(tools, fmt.args_key)
    if fmt in (GENERIC, HERMES):
        one = f'"{fmt.open}" space {call} "{fmt.close}"'
        more = f' ("\\n" {one})*' if parallel else ""
        # Lazy: the trigger `<tool_call>` is already written, the grammar starts right after it.
        root = f'space {call} "{fmt.close}"{more}' if lazy else f"{one}{more}"
        grammar = ToolGrammar(f"{rules}\nroot ::= {root}", (fmt.open,) if lazy else ())
    elif lazy:
        return None
    elif fmt is MISTRAL:
        # [TOOL_CALLS] is a control token no grammar can write: the array alone, as the parser accepts.
        more = f' ("," space {call})*' if parallel else ""
        grammar = ToolGrammar(f'{rules}\nroot ::= "[" space {call}{more} "]"')
    elif fmt is LLAMA3:
        grammar = ToolGrammar(f"{rules}\nroot ::= {call}")
    else:
        raise EngineError(f"no grammar for the tool format {fmt.name!r}")
    check_grammar_text(grammar.text)
    return grammar
