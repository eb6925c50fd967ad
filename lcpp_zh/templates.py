"""Chat templates: the built-in formats, the GGUF's own `tokenizer.chat_template`, and rendering to tokens.

The Jinja sources of the built-in formats live once, in lcpp_zh.convert.chat_templates (the converter
embeds them into GGUFs; the conversion package never imports the runtime); this module re-exports them and
renders any template in a sandbox. `<s>`/`</s>` in the rendered text become the BOS/EOS control tokens.
The part above `render_chat` imports no llama_cpp.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lcpp_zh.convert.chat_templates import BUILTIN_TEMPLATES, STOP_STRINGS, detect_template_name
from lcpp_zh.errors import TemplateError

logger = logging.getLogger(__name__)

__all__ = ["BUILTIN_TEMPLATES", "STOP_STRINGS", "detect_template_name", "ChatTemplate", "Rendered",
           "template_names", "get_template", "resolve_template", "render_chat", "EXAMPLE_CONVERSATION"]

AUTO = "auto"
ROLES = ("system", "user", "assistant")

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

    def render_text(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool,
                    bos_token: str, eos_token: str) -> str:
        check_messages(messages)
        try:
            template = _compiled(self.source)
            return template.render(messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt,
                                   bos_token=bos_token, eos_token=eos_token)
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


def _jinja_env() -> Any:
    # Same settings as transformers' apply_chat_template, so GGUF templates written for it render alike;
    # the immutable sandbox stops a template from touching anything outside its variables.
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
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


def render_chat(engine: Any, messages: Sequence[Mapping[str, str]], name: str | ChatTemplate | None = None, *,
                add_generation_prompt: bool = True) -> Rendered:
    """Render a conversation with the engine's vocabulary: BOS/EOS texts become control tokens, and a BOS
    is put in front only when the model wants one and the template did not write it (never doubled)."""
    template = template_for_engine(engine, name)
    bos = engine.token_text(engine.bos_id) if engine.bos_id >= 0 else ""
    eos = engine.token_text(engine.eos_id) if engine.eos_id >= 0 else ""
    text = template.render_text(messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos)
    tokens = engine.tokenize(text, add_bos=bool(getattr(engine, "add_bos", False)), special=True)
    return Rendered(text=text, tokens=tokens, stops=list(template.stops), template=template.name)
