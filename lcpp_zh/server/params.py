"""Turn a validated request into the engine's SamplingParams: defaults, context limits, stops and grammars.

A prompt that does not fit a slot's context is a 400 saying so; max_tokens is capped by what is left of the
context. response_format json_object / json_schema becomes a GBNF grammar (llama-cpp-python's pure-Python
schema converter, remote $refs disabled, limits checked first), so the model can only produce JSON of that
shape; a grammar or schema beyond the limits or that does not parse is a 400.
"""

from __future__ import annotations

import logging
from typing import Any

from lcpp_zh.errors import EngineError
from lcpp_zh.server.httperrors import ApiError
from lcpp_zh.server.schemas import SamplingFields

logger = logging.getLogger(__name__)

# Request fields copied as is into SamplingParams when the client sets them.
_PASSTHROUGH = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "presence_penalty",
                "frequency_penalty", "seed")


def check_prompt_fits(n_prompt: int, n_ctx_slot: int) -> None:
    """400 when the prompt leaves no room for even one generated token."""
    if n_prompt == 0:
        raise ApiError(400, "prompt is empty", param="prompt", code="empty_prompt")
    if n_prompt >= n_ctx_slot:
        raise ApiError(400, f"prompt is too long: {n_prompt} tokens, but one request holds at most {n_ctx_slot} "
                            "(the context the slots share, up to the model's training context); shorten it or serve "
                            "with a larger --ctx",
                       param="messages", code="context_length_exceeded")


def grammar_for(fields: SamplingFields, engine: Any = None) -> str | None:
    """The GBNF grammar the request asks for: an explicit `grammar`, or one built from response_format.

    Checked here so that a bad one is a 400 naming the problem before any engine work: limits on the schema
    and the grammar (lcpp_zh.runtime.grammar), then, with `engine` (an Engine or another front with
    `check_grammar`), a trial compile for its vocabulary.
    """
    from lcpp_zh.runtime.grammar import check_grammar_text, schema_to_grammar

    grammar, param = fields.grammar, "grammar"
    if not grammar:
        fmt = fields.response_format
        if fmt is None or fmt.type == "text":
            return None
        param = "response_format"
        if fmt.type == "json_object":
            from llama_cpp.llama_grammar import JSON_GBNF

            grammar = JSON_GBNF
        elif fmt.json_schema is None or not fmt.json_schema.schema_:
            raise ApiError(400, "response_format json_schema needs json_schema.schema", param=param)
        else:
            try:
                grammar = schema_to_grammar(fmt.json_schema.schema_)
            except EngineError as exc:
                raise ApiError(400, f"response_format: {exc}", param=param) from exc
    try:
        if engine is not None:
            engine.check_grammar(grammar)
        else:
            check_grammar_text(grammar)
    except EngineError as exc:
        raise ApiError(400, str(exc) if param == "grammar" else f"response_format: {exc}", param=param) from exc
    return grammar


def build_sampling(fields: SamplingFields, *, n_prompt: int, n_ctx_slot: int, extra_stops: list[str] = (),
                   engine: Any = None) -> Any:
    """SamplingParams for this request; fields the client left out keep the engine's defaults. Pass the
    model's `engine` so that a grammar that does not parse is a 400 too (see grammar_for)."""
    from lcpp_zh.runtime.sampling import SamplingParams

    check_prompt_fits(n_prompt, n_ctx_slot)
    kwargs: dict[str, Any] = {name: getattr(fields, name) for name in _PASSTHROUGH if getattr(fields, name) is not None}
    room = n_ctx_slot - n_prompt
    wanted = fields.max_completion_tokens or fields.max_tokens or SamplingParams().max_tokens
    # Capped rather than refused: OpenAI clients often send a large max_tokens meaning "as long as it takes".
    kwargs["max_tokens"] = max(1, min(wanted, room))
    stops = list(dict.fromkeys([*(fields.stop or []), *extra_stops]))
    if stops:
        kwargs["stop"] = stops
    grammar = grammar_for(fields, engine)
    if grammar:
        kwargs["grammar"] = grammar
    if fields.logit_bias:
        kwargs["logit_bias"] = fields.logit_bias  # ids beyond the vocabulary: the engine's submit refuses them
    # Fields the client left out take the model's own sampling settings (GGUF general.sampling.*), else
    # the seed's defaults.
    from lcpp_zh.runtime.gguf_defaults import sampling_defaults

    return sampling_defaults(getattr(engine, "metadata", None) or {}).replace(**kwargs)
