"""Chat templates: the built-in formats, the GGUF's own `tokenizer.chat_template`, and rendering to tokens.

The Jinja sources of the built-in formats live once, in lcpp_zh.convert.chat_templates (the converter
embeds them into GGUFs; the conversion package never imports the runtime); this module re-exports them and
renders any template in a sandbox. `<s>`/`</s>` in the template's own text become the BOS/EOS control
tokens; message contents are always text, so no message can forge a turn. Imports no llama_cpp: the engine
gives the vocabulary's special tokens and tokenizes.
"""

from __future__ import annotations

import bisect
import datetime
import functools
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lcpp_zh.convert.chat_templates import BUILTIN_TEMPLATES, STOP_STRINGS, detect_template_name
from lcpp_zh.errors import TemplateError

logger = logging.getLogger(__name__)

__all__ = ["BUILTIN_TEMPLATES", "STOP_STRINGS", "detect_template_name", "ChatTemplate", "Rendered",
           "template_names", "get_template", "choose_template", "MODEL_SOURCE_TEMPLATES", "resolve_template",
           "render_chat", "render_with_contents", "partition_special", "tokenize_protected", "EXAMPLE_CONVERSATION"]

AUTO = "auto"
# `tool` results reach only templates that know tools (lcpp_zh.server.tools); others get them as text.
ROLES = ("system", "user", "assistant", "tool")

EXAMPLE_CONVERSATION = [
    {"role": "system", "content": "你是一个乐于助人的助手。"},
    {"role": "user", "content": "介绍一下北京。"},
    {"role": "assistant", "content": "北京是中国的首都。"},
    {"role": "user", "content": "有哪些名胜古迹？"},
]


def template_names() -> list[str]:
    """Names accepted by --template: `auto` first, then the built-in formats."""
    return [AUTO, *BUILTIN_TEMPLATES]


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template in the Hugging Face convention, with the stop strings its format needs."""

    name: str
    source: str
    stops: tuple[str, ...] = ()

    def render_text(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool,
                    bos_token: str, eos_token: str, tools: Sequence[Mapping[str, Any]] | None = None) -> str:
        check_messages(messages)
        _render_deadline.value = time.monotonic() + RENDER_TIME_LIMIT_S
        # `tools` only when there are some: templates test `tools is defined` or `tools is not none`.
        extra = {"tools": [dict(t) for t in tools]} if tools else {}
        try:
            template = _compiled(self.source)
            return template.render(messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt,
                                   bos_token=bos_token, eos_token=eos_token, **extra)
        except TemplateError:
            raise
        except Exception as exc:  # noqa: BLE001 - jinja raises many kinds; all mean a broken template
            raise TemplateError(f"chat template {self.name!r} failed to render: {exc}") from exc


@dataclass(frozen=True)
class Rendered:
    """A conversation rendered for the model: text, prompt tokens and stop strings."""

    text: str
    tokens: list[int]
    stops: list[str] = field(default_factory=list)
    template: str = ""


def check_messages(messages: Sequence[Mapping[str, str]]) -> None:
    if not isinstance(messages, Sequence) or not messages:
        raise TemplateError("a conversation needs at least one message")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or message.get("role") not in ROLES:
            raise TemplateError(f"message {i}: role must be one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise TemplateError(f"message {i}: content must be text")


def _raise(message: str) -> None:
    raise TemplateError(f"chat template: {message}")


# A template from a GGUF is someone else's code: the sandbox stops it from touching anything, and this
# limit stops it from looping for ever (checked at every attribute, item and call it evaluates).
RENDER_TIME_LIMIT_S = 2.0
_render_deadline = threading.local()


def _check_render_time() -> None:
    deadline = getattr(_render_deadline, "value", None)
    if deadline is not None and time.monotonic() > deadline:
        raise TemplateError(f"chat template: rendering took longer than {RENDER_TIME_LIMIT_S:g} s and was stopped")


@functools.lru_cache(maxsize=1)
def _sandbox_class() -> type:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class TimedSandbox(ImmutableSandboxedEnvironment):
        def getattr(self, obj: Any, attribute: str) -> Any:
            _check_render_time()
            return super().getattr(obj, attribute)

        def getitem(self, obj: Any, argument: Any) -> Any:
            _check_render_time()
            return super().getitem(obj, argument)

        def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
            _check_render_time()
            return super().call(__context, __obj, *args, **kwargs)

    return TimedSandbox


def _jinja_env() -> Any:
    # Same settings as transformers' apply_chat_template, so GGUF templates written for it render alike;
    # the immutable sandbox stops a template from touching anything outside its variables.
    from jinja2.ext import loopcontrols

    env = _sandbox_class()(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env


@functools.lru_cache(maxsize=64)
def _compiled(source: str) -> Any:
    """A template compiled once: compiling takes milliseconds, rendering a compiled one is thread-safe."""
    return _jinja_env().from_string(source)


def guess_stops(source: str) -> tuple[str, ...]:
    """Stop strings for a template found in a GGUF or a file, by the turn markers it writes."""
    for name, builtin in BUILTIN_TEMPLATES.items():
        if source.strip() == builtin.strip():
            return tuple(STOP_STRINGS.get(name, ()))
    markers = [("<|im_start|>", "chatml"), ("[INST]", "llama2"), ("Human:", "llama2-chinese"),
               ("### Instruction", "alpaca"), ("USER:", "vicuna")]
    for marker, name in markers:
        if marker in source:
            return tuple(STOP_STRINGS.get(name, ()))
    return ()


def get_template(name: str) -> ChatTemplate:
    """A built-in template by name; TemplateError lists the choices for an unknown one."""
    if name not in BUILTIN_TEMPLATES:
        raise TemplateError(f"unknown template {name!r}; choose one of {', '.join(template_names())}")
    return ChatTemplate(name, BUILTIN_TEMPLATES[name], tuple(STOP_STRINGS.get(name, ())))


def load_template_file(path: str | Path) -> ChatTemplate:
    """A Jinja template from a file (--template-file)."""
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"{path}: cannot read the template file ({exc})") from exc
    try:
        _jinja_env().parse(source)
    except Exception as exc:  # noqa: BLE001 - TemplateSyntaxError and friends
        raise TemplateError(f"{path}: not a valid Jinja template: {exc}") from exc
    return ChatTemplate(path.name, source, guess_stops(source))


# The seed's --model_source picks the chat format.
MODEL_SOURCE_TEMPLATES = {"llama2_chinese": "llama2-chinese", "llama2_meta": "llama2"}


def choose_template(name: str | None = None, path: str | Path | None = None,
                    model_source: str | None = None) -> str | ChatTemplate | None:
    """The chat template the command line asks for, checked before any model loads: a --template-file's
    template, else the built-in --template (its name; TemplateError for an unknown one), else the seed's
    --model_source's, else None (auto: resolve_template picks it once the model is loaded)."""
    if path is not None:
        return load_template_file(path)
    if name and name != AUTO:
        return get_template(name).name
    if model_source:
        if model_source not in MODEL_SOURCE_TEMPLATES:
            raise TemplateError(f"unknown model source {model_source!r}; choose one of "
                                f"{', '.join(MODEL_SOURCE_TEMPLATES)}")
        return MODEL_SOURCE_TEMPLATES[model_source]
    return None


def resolve_template(name: str | None, *, gguf_template: str | None = None,
                     model_names: Sequence[str | None] = (), has_chatml_tokens: bool = False) -> ChatTemplate:
    """The template to use: a named built-in, or for `auto`/None the GGUF's own template, then one
    recognised from the model's names, then ChatML for vocabularies with its markers, else llama2-chinese."""
    if name and name != AUTO:
        return get_template(name)
    if gguf_template:
        for builtin, source in BUILTIN_TEMPLATES.items():
            if gguf_template.strip() == source.strip():
                return get_template(builtin)
        return ChatTemplate("gguf", gguf_template, guess_stops(gguf_template))
    detected = detect_template_name(*model_names)
    if detected:
        return get_template(detected)
    fallback = "chatml" if has_chatml_tokens else "llama2-chinese"
    logger.info("the model has no chat template and an unknown name: using %s", fallback)
    return get_template(fallback)


def template_for_engine(engine: Any, name: str | ChatTemplate | None) -> ChatTemplate:
    """Resolve `name` (or a ChatTemplate as is) against an engine's GGUF metadata."""
    if isinstance(name, ChatTemplate):
        return name
    metadata = getattr(engine, "metadata", None) or {}
    path = getattr(engine, "model_path", None)
    names = [metadata.get("general.name"), metadata.get("general.basename"), path.name if path else None]
    chatml = len(engine.tokenize("<|im_start|>", add_bos=False, special=True)) == 1
    return resolve_template(name, gguf_template=getattr(engine, "chat_template", None), model_names=names,
                            has_chatml_tokens=chatml)


# A per-render stand-in for each message's content. Private-use characters never occur in a template's own
# text, and the nonce makes a stand-in unguessable; digits survive upper/lower/title casing.
_OPEN, _CLOSE = "\ue000", "\ue001"
# C's isspace() in the "C" locale: the whitespace llama.cpp's lstrip/rstrip attributes remove.
_C_SPACE = " \t\n\v\f\r"


def render_with_contents(template: ChatTemplate, messages: Sequence[Mapping[str, Any]], *,
                         add_generation_prompt: bool, bos_token: str, eos_token: str,
                         tools: Sequence[Mapping[str, Any]] | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the [start, end) spans of message contents in it.

    The template renders twice: with the real contents, and with a stand-in per message. The stand-in render
    splits into the template's own segments, which must then spell the real text around each content as is,
    stripped, lstripped or rstripped (Jinja's trim and Python's strip methods). A template that changes
    contents in another way (replace, escaping, ...) gets its own segments around the untouched contents; one
    that cuts a stand-in apart is refused rather than ever letting content text become control tokens."""
    options = {"add_generation_prompt": add_generation_prompt, "bos_token": bos_token, "eos_token": eos_token,
               "tools": tools}
    text = template.render_text(messages, **options)
    nonce = f"{secrets.randbits(64):020d}"
    # An empty content needs no stand-in (nothing to protect), and keeps templates that test for it alike.
    stand_ins = [{**m, "content": f"{_OPEN}{nonce}:{i}{_CLOSE}" if m["content"] else ""} for i, m in enumerate(messages)]
    pieces = re.split(f"{_OPEN}{nonce}:(\\d+){_CLOSE}", template.render_text(stand_ins, **options))
    segments = pieces[0::2]
    contents = [messages[int(i)]["content"] for i in pieces[1::2]]
    if any(_OPEN in seg or _CLOSE in seg or nonce in seg for seg in segments):
        raise TemplateError(f"chat template {template.name!r} cuts message contents apart, so its own text "
                            "cannot be told from theirs; choose another template")
    spans = _align(text, segments, contents)
    if spans is not None:
        return text, spans
    _warn_rewrites(template.name)
    parts, spans, pos = [segments[0]], [], len(segments[0])
    for content, segment in zip(contents, segments[1:], strict=True):
        spans.append((pos, pos + len(content)))
        parts += [content, segment]
        pos += len(content) + len(segment)
    return "".join(parts), spans


def _align(text: str, segments: list[str], contents: list[str]) -> list[tuple[int, int]] | None:
    """Content spans such that text == segments[0] + f(contents[0]) + segments[1] + ..., each f one of
    as-is/strip/lstrip/rstrip; None when there are none. Backtracking without recursion (conversations can
    be long), remembering dead ends so it stays linear. Every such split gives each non-space character the
    same owner (variants differ in edge whitespace only), so the first one found is as good as any."""
    if not text.startswith(segments[0]):
        return None
    variants = [list(dict.fromkeys((c, c.strip(), c.lstrip(), c.rstrip()))) for c in contents]
    dead: set[tuple[int, int]] = set()
    stack = [[0, len(segments[0]), 0]]  # per content: its index, where it starts, the next variant to try
    while stack:
        j, pos, k = stack[-1]
        if j == len(contents) and pos == len(text):
            return [(start, start + len(variants[i][tried - 1])) for i, start, tried in stack[:-1]]
        if j == len(contents) or k == len(variants[j]) or (j, pos) in dead:
            dead.add((j, pos))
            stack.pop()
            continue
        stack[-1][2] = k + 1
        end = pos + len(variants[j][k])
        if text.startswith(variants[j][k], pos) and text.startswith(segments[j + 1], end):
            stack.append([j + 1, end + len(segments[j + 1]), 0])
    return None


@functools.lru_cache(maxsize=16)
def _warn_rewrites(name: str) -> None:
    logger.warning("chat template %r rewrites message contents; they are used unchanged in its text", name)


def partition_special(text: str, specials: Sequence[Any],
                      protected: Sequence[tuple[int, int]] = ()) -> list[int | tuple[int, int]]:
    """llama.cpp's tokenizer_st_partition (llama-vocab.cpp), in Python: token ids and [start, end) runs of
    text. For each special token in the vocabulary's order (longest first), every raw run is split at each
    match, and lstrip/rstrip tokens drop the whitespace beside them, as llama.cpp does. Control tokens
    (`.control`) never match where they would overlap a `protected` span (sorted, disjoint); user-defined
    tokens match everywhere, as llama.cpp matches them even when not parsing specials."""
    starts = [a for a, _ in protected]

    def overlaps(a: int, b: int) -> bool:
        i = bisect.bisect_left(starts, b) - 1  # the last span starting before b: the one ending last
        return i >= 0 and protected[i][1] > a

    fragments: list[int | tuple[int, int]] = [(0, len(text))] if text else []
    for special in specials:
        guarded, needle = special.control and bool(protected), special.text
        out: list[int | tuple[int, int]] = []
        for fragment in fragments:
            if isinstance(fragment, int):
                out.append(fragment)
                continue
            start, end = fragment
            while True:
                match = text.find(needle, start, end)
                while guarded and match >= 0 and overlaps(match, match + len(needle)):
                    match = text.find(needle, match + 1, end)
                if match < 0:
                    if end > start:
                        out.append((start, end))
                    break
                left = match
                while special.lstrip and left > start and text[left - 1] in _C_SPACE:
                    left -= 1
                if left > start:
                    out.append((start, left))
                out.append(special.id)
                start = match + len(needle)
                while special.rstrip and start < end and text[start] in _C_SPACE:
                    start += 1
        fragments = out
    return fragments


def tokenize_protected(engine: Any, text: str, protected: Sequence[tuple[int, int]], *, add_bos: bool) -> list[int]:
    """Tokens of `text` with control tokens parsed everywhere but in the `protected` spans. Each raw run is
    tokenized on its own without specials, as llama.cpp tokenizes each fragment (SentencePiece's space prefix
    after a special token included), so with nothing to protect this equals engine.tokenize(text,
    special=True). A BOS goes in front when asked and not already there (never doubled)."""
    tokens: list[int] = []
    for fragment in partition_special(text, engine.special_tokens(), protected):
        if isinstance(fragment, int):
            tokens.append(fragment)
        else:
            tokens += engine.tokenize(text[fragment[0]:fragment[1]], add_bos=False, special=False)
    if add_bos and engine.bos_id >= 0 and (not tokens or tokens[0] != engine.bos_id):
        tokens.insert(0, engine.bos_id)
    return tokens


def render_chat(engine: Any, messages: Sequence[Mapping[str, Any]], name: str | ChatTemplate | None = None, *,
                add_generation_prompt: bool = True, tools: Sequence[Mapping[str, Any]] | None = None) -> Rendered:
    """Render a conversation with the engine's vocabulary: control-token texts the template writes (BOS/EOS,
    `<|im_end|>`) become control tokens, the same texts inside a message stay text; a BOS is put in front only
    when the model wants one and the template did not write it (never doubled)."""
    template = template_for_engine(engine, name)
    bos = engine.token_text(engine.bos_id) if engine.bos_id >= 0 else ""
    eos = engine.token_text(engine.eos_id) if engine.eos_id >= 0 else ""
    text, spans = render_with_contents(template, messages, add_generation_prompt=add_generation_prompt,
                                       bos_token=bos, eos_token=eos, tools=tools)
    tokens = tokenize_protected(engine, text, spans, add_bos=bool(getattr(engine, "add_bos", False)))
    return Rendered(text=text, tokens=tokens, stops=list(template.stops), template=template.name)
