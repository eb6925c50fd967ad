"""Prompts for the engine: chat messages through lcpp_zh.templates, raw text through the model's tokenizer.

The server never formats a chat itself: the template module owns every chat format (llama2-chinese, llama2,
chatml, the GGUF's own template, ...), so `chat`, `serve` and `/generate` produce the same prompt. In a chat,
message contents are always text (`<s>` or `<|im_end|>` typed by a user stays text); a raw prompt
(/v1/completions, like /tokenize) is the caller's own and its control-token texts are parsed, as llama.cpp does.
"""

from __future__ import annotations

import logging
from typing import Any

from lcpp_zh.errors import TemplateError
from lcpp_zh.server.httperrors import ApiError
from lcpp_zh.server.registry import ServedModel

logger = logging.getLogger(__name__)


def template_source(model: ServedModel, template: str | None) -> str:
    """The Jinja source of the template a chat request renders with (tool formats are told by it)."""
    from lcpp_zh import templates

    try:
        return templates.template_for_engine(model.engine, template or model.template).source
    except TemplateError as exc:
        raise ApiError(400, str(exc), param="template") from exc


def template_names() -> list[str]:
    """Names a request may pick as `template` (the web page's picker)."""
    from lcpp_zh import templates

    return list(templates.template_names())


def chat_prompt(model: ServedModel, messages: list[dict[str, Any]], template: str | None,
                tools: list[dict[str, Any]] | None = None) -> tuple[list[int], list[str]]:
    """Prompt tokens and extra stop strings for a conversation, rendered with the model's (or the given)
    template; `tools` go to a template that knows them (lcpp_zh.server.tools decides)."""
    from lcpp_zh import templates

    name = template or model.template
    try:
        rendered = templates.render_chat(model.engine, messages, name, add_generation_prompt=True, tools=tools)
    except TemplateError as exc:
        raise ApiError(400, str(exc), param="template" if template else "messages") from exc
    return list(rendered.tokens), list(rendered.stops)


def add_bos(model: ServedModel) -> bool:
    """Whether raw text prompts start with BOS: the engine's (GGUF's) own setting, else yes (Llama's convention)."""
    if isinstance(getattr(model.engine, "add_bos", None), bool):
        return model.engine.add_bos
    value = (getattr(model.engine, "metadata", None) or {}).get("tokenizer.ggml.add_bos_token")
    if value is None:
        return True
    return str(value).lower() in ("true", "1")


def text_prompt(model: ServedModel, prompt: str | list[int]) -> list[int]:
    """Tokens of a raw completion prompt (a token list is taken as is, after a range check); control-token
    texts in it (`<s>`, `<|im_start|>`) are parsed, so a client can write a template by hand."""
    if isinstance(prompt, list):
        n_vocab = _n_vocab(model.engine)
        if n_vocab and any(t < 0 or t >= n_vocab for t in prompt):
            raise ApiError(400, f"prompt token ids must lie in [0, {n_vocab})", param="prompt")
        return list(prompt)
    return list(model.engine.tokenize(prompt, add_bos=add_bos(model), special=True))


def _n_vocab(engine: Any) -> int | None:
    value = getattr(engine, "n_vocab", None)
    return int(value) if isinstance(value, int) else None
