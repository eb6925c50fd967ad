"""Grammars checked before they reach llama.cpp: GBNF text within limits, JSON schemas within limits, and a
trial compile whose parse error becomes the message.

llama.cpp's GBNF parser recurses once per nested group (about 20,000 levels overflow an 8 MB stack), copies a
repeated string literal once per repetition (`"<45 kB>"{2000}` takes 1.8 GB and 5 s) and silently treats a
bound above 2000 as unbounded; llama-cpp-python's schema converter spells `maxLength: N` as N nested groups.
Everything here is a function of the text (and a vocabulary), so a vocabulary-only model can run it. It
never samples: lcpp_zh.runtime.sampling builds chains from a checked grammar.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
import threading
from typing import Any

from lcpp_zh.errors import EngineError

logger = logging.getLogger(__name__)

# GBNF text, in UTF-8 bytes (what the parser reads). The one grammar limit: the server's request
# validation checks it too (check_grammar_size), so a body is refused before any other work.
MAX_GRAMMAR_BYTES = 100_000
# Nested groups: each costs the parser ~350 bytes of stack, so 1024 need ~360 kB (any thread has 1 MB).
MAX_NESTING = 1024
# llama.cpp refuses a lower bound above 2000 itself, and reads an upper bound above it as "no bound".
MAX_REPEAT = 2000
# Grammar elements that repetitions copy (a literal of n characters repeated m times copies n * m).
MAX_EXPANDED = 200_000
# JSON schemas: the converter nests (max - min) groups for maxLength/maxItems and llama.cpp refuses more
# than about 1000 (its limit on generated rules).
MAX_SCHEMA_BYTES = 100_000
MAX_SCHEMA_COUNT = 1000
MAX_SCHEMA_DEPTH = 64
MAX_SCHEMA_NODES = 2000
MAX_PROPERTIES = 200
MAX_PATTERN_CHARS = 1000
MAX_PATTERN_EXPANSION = 10_000

_REPEAT_RE = re.compile(r"\{\s*(\d+)\s*(?:(,)\s*(\d*)\s*)?\}")
_PARSE_ERROR_RE = re.compile(r"error parsing grammar: (.*)")
_COUNT_KEYS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
_MAP_KEYS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
_DATA_KEYS = frozenset({"enum", "const", "default", "examples", "required", "description", "title"})


# --- GBNF ---
def check_grammar_size(text: str) -> None:
    """Raise EngineError when a grammar is longer than MAX_GRAMMAR_BYTES (UTF-8)."""
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_GRAMMAR_BYTES:
        raise EngineError(f"grammar is {size} bytes; at most {MAX_GRAMMAR_BYTES} are accepted")


def check_grammar_text(text: str) -> None:
    """Raise EngineError when a GBNF grammar is beyond the limits that keep llama.cpp's parser safe."""
    check_grammar_size(text)
    depth = expanded = 0
    last = 1  # grammar elements of the item a repetition would copy
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if c in "\"[":
            i, last = _skip_quoted(text, i)
            continue
        if c == "(":
            depth += 1
            if depth > MAX_NESTING:
                raise EngineError(f"grammar nests groups more than {MAX_NESTING} deep")
        elif c == ")":
            depth = max(0, depth - 1)
            last = 1  # a group becomes a rule: repeating it copies one reference
        elif c == "{" and (match := _REPEAT_RE.match(text, i)):
            low = int(match.group(1))
            high = low if not match.group(2) else int(match.group(3)) if match.group(3) else None
            bound = max(low, high or 0)
            if bound > MAX_REPEAT:
                raise EngineError(f"grammar repetition {match.group(0)} is above the limit of {MAX_REPEAT}")
            expanded += last * max(bound, 1)
            if expanded > MAX_EXPANDED:
                raise EngineError(f"grammar repetitions copy {expanded} elements (at {match.group(0)}); at most "
                                  f"{MAX_EXPANDED}: repeat a rule (`x ::= \"...\"` then `x{{n}}`), not a long literal")
            last = last * max(bound, 1) + 1  # `"a"{m}{n}` repeats all m copies (and a rule reference)
            i = match.end()
            continue
        elif c.isalnum() or c in "-.":
            last = 1
        i += 1


def _skip_quoted(text: str, i: int) -> tuple[int, int]:
    """End of the literal or character class at text[i], and how many elements it holds (an upper bound)."""
    close = '"' if text[i] == '"' else "]"
    j, count = i + 1, 0
    while j < len(text) and text[j] != close:
        j += 2 if text[j] == "\\" else 1
        count += 1
    return j + 1, max(count, 1)


_stderr_lock = threading.Lock()


class _ThreadRecords(logging.Handler):
    """Collects the llama.cpp log records of the current thread (the callback runs on the calling thread)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


def compile_grammar(text: str, vocab: Any) -> Any:
    """llama_sampler_init_grammar on a checked grammar; the caller frees the sampler. A parse error is an
    EngineError naming the problem (llama.cpp prints it, with the whole grammar, on stderr: captured here)."""
    check_grammar_text(text)
    records = _ThreadRecords()
    llama_log = logging.getLogger("llama.cpp")
    llama_log.addHandler(records)
    try:
        sampler, printed = _init_capturing_stderr(text, vocab)
    finally:
        llama_log.removeHandler(records)
    if sampler:
        _reprint(printed)
        return sampler
    match = _PARSE_ERROR_RE.search(printed)
    if match:
        _reprint(printed.replace(f"parse: {match.group(0)}\n\n{text}\n", "", 1))
        problem = match.group(1).strip()
    else:
        _reprint(printed)
        problem = "; ".join(m for m in records.messages if "failed to parse grammar" not in m)
    raise EngineError(f"grammar does not parse: {problem or 'GBNF with a `root` rule expected'}")


def _init_capturing_stderr(text: str, vocab: Any) -> tuple[Any, str]:
    """llama_sampler_init_grammar with file descriptor 2 pointed at a temporary file (one call at a time)."""
    import llama_cpp

    with _stderr_lock, tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to capture
            return llama_cpp.llama_sampler_init_grammar(vocab, text.encode("utf-8"), b"root"), ""
        try:
            os.dup2(capture.fileno(), 2)
            sampler = llama_cpp.llama_sampler_init_grammar(vocab, text.encode("utf-8"), b"root")
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        return sampler, capture.read().decode("utf-8", errors="replace")


def _reprint(text: str) -> None:
    """Whatever other threads wrote to stderr while it was captured."""
    if text:
        os.write(2, text.encode("utf-8", errors="replace"))


def check_grammar(text: str, vocab: Any) -> None:
    """Raise EngineError for a grammar that is beyond the limits or does not parse for this vocabulary."""
    import llama_cpp

    llama_cpp.llama_sampler_free(compile_grammar(text, vocab))


# --- JSON schema ---
def schema_to_grammar(schema: Any) -> str:
    """GBNF for a JSON schema (dict or JSON text) through llama-cpp-python's converter, after checking the
    schema against limits that keep the converter's output small; remote $refs are refused."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        text = schema if isinstance(schema, str) else json.dumps(schema)
        value = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise EngineError(f"json schema is not JSON: {exc}") from exc
    if len(text) > MAX_SCHEMA_BYTES:
        raise EngineError(f"json schema is {len(text)} bytes; at most {MAX_SCHEMA_BYTES} are accepted")
    check_schema(value)
    try:
        grammar = json_schema_to_gbnf(text)
    except Exception as exc:  # noqa: BLE001 - asserts, KeyErrors, RecursionError: a schema it cannot use
        raise EngineError(f"json schema cannot be turned into a grammar: {exc or type(exc).__name__}") from exc
    check_grammar_text(grammar)
    return grammar


def check_schema(schema: Any) -> None:
    """Raise EngineError for a schema beyond the limits (counts, depth, size, patterns), naming where."""
    # (value, path, depth, is_schema): a name map such as `properties` holds schemas but is none itself;
    # enum/const/default values are data and are not walked.
    stack: list[tuple[Any, str, int, bool]] = [(schema, "", 1, True)]
    nodes = 0
    while stack:
        node, path, depth, is_schema = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise EngineError(f"json schema nests more than {MAX_SCHEMA_DEPTH} levels deep (at {path or 'the top'})")
        if isinstance(node, list):
            stack.extend((item, f"{path}[{i}]", depth + 1, True) for i, item in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        if not is_schema:
            stack.extend((value, f"{path}.{key}", depth + 1, True) for key, value in node.items())
            continue
        nodes += 1
        if nodes > MAX_SCHEMA_NODES:
            raise EngineError(f"json schema has more than {MAX_SCHEMA_NODES} subschemas")
        _check_schema_node(node, path)
        for key, value in node.items():
            if key not in _DATA_KEYS:
                stack.append((value, f"{path}.{key}" if path else str(key), depth + 1, key not in _MAP_KEYS))


def _check_schema_node(node: dict, path: str) -> None:
    where = f" (at {path})" if path else ""
    for key in _COUNT_KEYS:
        if key not in node:
            continue
        value = node[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise EngineError(f"json schema {key} must be a non-negative integer{where}")
        if value > MAX_SCHEMA_COUNT:
            raise EngineError(f"json schema {key} {value} is above the limit of {MAX_SCHEMA_COUNT}{where}")
    for low, high in (("minLength", "maxLength"), ("minItems", "maxItems")):
        if low in node and high in node and node[low] > node[high]:
            raise EngineError(f"json schema {low} {node[low]} is above {high} {node[high]}{where}")
    properties = node.get("properties")
    if isinstance(properties, dict) and len(properties) > MAX_PROPERTIES:
        raise EngineError(f"json schema has {len(properties)} properties in one object; at most {MAX_PROPERTIES}{where}")
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        if len(pattern) > MAX_PATTERN_CHARS:
            raise EngineError(f"json schema pattern is {len(pattern)} characters; at most {MAX_PATTERN_CHARS}{where}")
        expansion = pattern_expansion(pattern)
        if expansion > MAX_PATTERN_EXPANSION:
            raise EngineError(f"json schema pattern repeats to about {expansion} items; at most "
                              f"{MAX_PATTERN_EXPANSION}{where}")


def pattern_expansion(pattern: str) -> int:
    """An upper bound of the items the converter writes for a regular expression: {m,n} copies what it
    follows max(m, n) times, nested groups multiply."""
    groups: list[int] = [0]
    last = 0
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            last, i = 1, i + 2
            groups[-1] += 1
            continue
        if c == "[":
            j = i + 1
            while j < n and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            last, i = 1, j + 1
            groups[-1] += 1
            continue
        if c == "(":
            groups.append(0)
        elif c == ")" and len(groups) > 1:
            last = max(groups.pop(), 1)
            groups[-1] += last
        elif c == "{" and (match := _REPEAT_RE.match(pattern, i)):
            bound = max(int(match.group(1)), int(match.group(3) or 0))
            if bound > MAX_SCHEMA_COUNT:
                return bound * max(last, 1)
            groups[-1] += last * (max(bound, 1) - 1)
            last *= max(bound, 1)
            i = match.end()
            continue
        elif c not in "|*+?^$":
            last = 1
            groups[-1] += 1
        i += 1
    return sum(groups)
