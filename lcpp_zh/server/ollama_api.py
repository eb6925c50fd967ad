"""Ollama's native API on the same server: /api/chat, /api/generate, /api/embed, /api/embeddings (and, through
ollama_models, /api/version, /api/tags, /api/show, /api/ps).

A translation layer over the path /v1 takes: Ollama's `options` and `format` become SamplingFields and go
through build_sampling (the same checks, grammars, stops and context limits), prompts are rendered by the
same templates, answers stream from the same engine, as NDJSON. Errors come as {"error": "..."}.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from lcpp_zh.server import ollama_models, tools
from lcpp_zh.server.httperrors import ApiError
from lcpp_zh.server.keep_alive import parse_keep_alive
from lcpp_zh.server.ollama_models import OllamaRoute, hold, rfc3339
from lcpp_zh.server.ollama_schemas import (
    INT32_MAX,
    GenerationFields,
    OllamaChatRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
    OllamaOptions,
)
from lcpp_zh.server.ollama_tools import ollama_message, openai_chat
from lcpp_zh.server.openai_api import _chat_turn as chat_turn
from lcpp_zh.server.openai_api import embed_texts, submit
from lcpp_zh.server.params import build_sampling
from lcpp_zh.server.prompting import chat_prompt, text_prompt
from lcpp_zh.server.schemas import SamplingFields
from lcpp_zh.server.streaming import EngineStreamResponse, collect, engine_batches, is_finished

logger = logging.getLogger(__name__)
router = APIRouter(route_class=OllamaRoute)
router.include_router(ollama_models.router)

# Options copied as they are into SamplingFields, which checks their ranges as it does for /v1.
_SAMPLING_OPTIONS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "presence_penalty",
                     "frequency_penalty", "seed", "stop")
NO_VISION = "lcpp-zh serves text-only models: images are not supported"
# Builds one response object: (text, extra fields, the engine's Finished event or None) -> object.
Shape = Callable[[str, dict[str, Any], Any], dict[str, Any]]


def response_format(body: GenerationFields) -> dict[str, Any] | None:
    """Ollama's `format` as OpenAI's response_format: "json" is JSON mode, an object a JSON schema."""
    fmt = body.format
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"schema": fmt}} if fmt else {"type": "json_object"}
    if fmt == "json":
        return {"type": "json_object"}
    if fmt:
        raise ApiError(400, f'format must be "json" or a JSON schema, not {fmt!r}', param="format")
    return None


def _sampling_fields(body: GenerationFields) -> SamplingFields:
    """Ollama's options and format as the /v1 sampling fields; a bad value is a 400 naming options.<field>."""
    opts = body.options or OllamaOptions()
    values: dict[str, Any] = {n: getattr(opts, n) for n in _SAMPLING_OPTIONS if getattr(opts, n) is not None}
    # Ollama's num_predict -1 (its default) and -2 mean "until the context is full"; build_sampling caps
    # the request at what the slot's context has left.
    values["max_tokens"] = opts.num_predict if opts.num_predict and opts.num_predict > 0 else INT32_MAX
    values["response_format"] = response_format(body)
    try:
        return SamplingFields.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
        raise ApiError(400, f"options.{where}: {error['msg']}", param=f"options.{where}") from None


async def _start(request: Request, body: GenerationFields, model: Any, tokens: list[int], stops: list[str],
                 plan: tools.ToolPlan | None = None) -> Any:
    """Sampling settings (through build_sampling, as /v1) and the engine stream of one request."""
    fields = _sampling_fields(body)
    opts = body.options or OllamaOptions()
    # num_ctx cannot grow a loaded model's context (Ollama would reload the model); a smaller one limits
    # this request's prompt and answer to it.
    n_ctx = min(opts.num_ctx, model.engine.n_ctx_slot) if opts.num_ctx else model.engine.n_ctx_slot

    def build() -> Any:
        params = build_sampling(fields, n_prompt=len(tokens), n_ctx_slot=n_ctx, extra_stops=stops,
                                engine=model.engine)
        if opts.repeat_last_n is not None:
            params = params.replace(repeat_last_n=opts.repeat_last_n)
        if plan is not None and plan.grammar:  # checked and trial-compiled by plan_tools, as for /v1
            params = params.replace(grammar=plan.grammar, grammar_triggers=plan.triggers)
        return params

    try:
        # Compiling a grammar (to check it) can take a while: not on the event loop.
        params = await asyncio.to_thread(build) if fields.response_format is not None else build()
    except ApiError as exc:
        if exc.param == "response_format":  # our name for Ollama's `format`
            raise ApiError(400, exc.message.replace("response_format", "format"), param="format") from None
        raise
    return submit(request, model, tokens, params)


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _timings(finished: Any, started: float, load_s: float) -> dict[str, int]:
    """Ollama's statistics, in nanoseconds: prompt time is the time to the first token (queueing included),
    generation time runs from the first token to the last."""
    n = finished.completion_tokens
    eval_s = (n - 1) / finished.tokens_per_s if n > 1 and finished.tokens_per_s > 0 else 0.0
    return {"total_duration": _ns(time.perf_counter() - started), "load_duration": _ns(load_s),
            "prompt_eval_count": finished.prompt_tokens, "prompt_eval_duration": _ns(finished.ttft_s),
            "eval_count": n, "eval_duration": _ns(eval_s)}


def _done_reason(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _line(payload: dict[str, Any]) -> bytes:
    return (json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


async def _ndjson(stream: Any, request: Request, alias: str, *, piece: Callable[[str], dict[str, Any]],
                  final: Callable[[Any], dict[str, Any]]) -> AsyncIterator[bytes]:
    """Ollama's stream: one JSON object per line, text pieces, then a `done` object with the statistics;
    an engine failure after the status line is an {"error"} line, as Ollama sends it."""
    state = request.app.state.lcpp
    async for events in engine_batches(stream, state.metrics, alias, state.stream_interval_s):
        end = events[-1]
        text = "".join(event.text for event in events if not is_finished(event))
        if text:
            yield _line(piece(text))
        if not is_finished(end):
            continue
        if end.reason == "error":
            yield _line({"error": f"generation failed: {getattr(end, 'error', None)}"})
        elif end.reason != "cancelled":
            yield _line(final(end))
        return


async def _respond(request: Request, body: GenerationFields, model: Any, tokens: list[int], stops: list[str], *,
                   started: float, load_s: float, shape: Shape) -> Any:
    """Run one generation and answer it streamed or whole; `shape(text, extra, finished)` builds a response
    object (a piece, or with `finished` the last one)."""
    stream = await _start(request, body, model, tokens, stops)

    def final(end: Any, text: str = "") -> dict[str, Any]:
        extra = {"done": True, "done_reason": _done_reason(end.reason), **_timings(end, started, load_s)}
        return shape(text, extra, end)

    if body.stream:
        events = _ndjson(stream, request, model.alias, piece=lambda text: shape(text, {}, None), final=final)
        return EngineStreamResponse(events, stream, media_type="application/x-ndjson")
    outcome = await collect(stream, request, request.app.state.lcpp.metrics, model.alias)
    return JSONResponse(final(outcome.finished, outcome.text))


async def _load_or_unload(request: Request, body: GenerationFields, shape: Shape) -> Any:
    """A request without a prompt loads the model (keep_alive 0: unloads it), as Ollama does."""
    registry = request.app.state.lcpp.registry
    if body.keep_alive is not None and parse_keep_alive(body.keep_alive) == 0:
        if not body.model:
            raise ApiError(400, "model is required", param="model")
        await registry.unload(body.model)
        return JSONResponse(shape("", {"done": True, "done_reason": "unload"}, None))
    await hold(request, body.model, body.keep_alive)
    return JSONResponse(shape("", {"done": True, "done_reason": "load"}, None))


async def _tool_reply(request: Request, body: OllamaChatRequest, model: Any, stream: Any, plan: tools.ToolPlan,
                      shape: Shape, *, started: float, load_s: float) -> Any:
    """A reply that may call tools is parsed once it is whole; streamed, it comes as one message line and
    the final line (Ollama, too, sends a call in one piece)."""
    outcome = await collect(stream, request, request.app.state.lcpp.metrics, model.alias)
    message = ollama_message(plan, outcome.text)
    end = outcome.finished
    last = shape("", {"done": True, "done_reason": _done_reason(end.reason), **_timings(end, started, load_s)}, end)
    if not body.stream:
        return JSONResponse({**last, "message": message})
    lines = [_line({**shape("", {}, None), "message": message}), _line(last)]

    async def replay() -> AsyncIterator[bytes]:
        for line in lines:
            yield line

    return StreamingResponse(replay(), media_type="application/x-ndjson")


def _refuse_thinking(body: GenerationFields) -> None:
    if body.think not in (None, False, "", "false"):
        raise ApiError(400, f"{body.model!r} does not support thinking", param="think")


@router.post("/api/chat")
async def chat(body: OllamaChatRequest, request: Request) -> Any:
    started = time.perf_counter()
    _refuse_thinking(body)

    def shape(text: str, extra: dict[str, Any], _end: Any) -> dict[str, Any]:
        return {"model": body.model, "created_at": rfc3339(time.time()),
                "message": {"role": "assistant", "content": text}, "done": False, **extra}

    if not body.messages:
        return await _load_or_unload(request, body, shape)
    for i, message in enumerate(body.messages):
        if message.images:
            raise ApiError(400, f"messages[{i}].images: {NO_VISION}", param=f"messages.{i}.images")
    chat_body = openai_chat(body, response_format(body))
    model, load_s = await hold(request, body.model, body.keep_alive)
    # The chat path of /v1: tools planned, messages rendered by the template, long histories handled.
    plan, tokens, stops, _dropped = await asyncio.to_thread(chat_turn, model, chat_body,
                                                            request.app.state.lcpp.context_overflow)
    if plan is None or not plan.calling:
        return await _respond(request, body, model, tokens, stops, started=started, load_s=load_s, shape=shape)
    stream = await _start(request, body, model, tokens, stops, plan)
    return await _tool_reply(request, body, model, stream, plan, shape, started=started, load_s=load_s)


def _check_generate(body: OllamaGenerateRequest) -> None:
    """Fields /api/generate cannot honour here, refused with the reason."""
    if body.images:
        raise ApiError(400, f"images: {NO_VISION}", param="images")
    if body.suffix:
        raise ApiError(400, "suffix (fill-in-the-middle) is not supported: send the text before the gap as the "
                            "prompt", param="suffix")
    if body.template:
        raise ApiError(400, "template (a Go template) is not supported: prompts use the model's own chat template; "
                            "send raw=true with a prompt you formatted yourself", param="template")
    if body.raw and body.system:
        raise ApiError(400, "system has no place in a raw prompt (raw=true sends the prompt as it is): write the "
                            "system text into the prompt", param="system")


def _generate_prompt(model: Any, body: OllamaGenerateRequest) -> tuple[list[int], list[str]]:
    """Tokens and stops: raw, the prompt as it is; else a user turn (after `system`) in the chat template.
    A `context` from an earlier answer goes first."""
    context = list(body.context or [])
    n_vocab = getattr(model.engine, "n_vocab", None)
    if isinstance(n_vocab, int) and any(not 0 <= t < n_vocab for t in context):
        raise ApiError(400, f"context: token ids must lie in [0, {n_vocab})", param="context")
    if body.raw:
        return context + text_prompt(model, body.prompt), []
    messages = [{"role": "system", "content": body.system}] if body.system else []
    messages.append({"role": "user", "content": body.prompt})
    tokens, stops = chat_prompt(model, messages, None)
    return context + tokens, stops


@router.post("/api/generate")
async def generate(body: OllamaGenerateRequest, request: Request) -> Any:
    started = time.perf_counter()
    _refuse_thinking(body)
    _check_generate(body)
    prompt_tokens: list[int] = []

    def shape(text: str, extra: dict[str, Any], end: Any) -> dict[str, Any]:
        out = {"model": body.model, "created_at": rfc3339(time.time()), "response": text, "done": False, **extra}
        if end is not None and not body.raw:  # the conversation so far, for the next request's `context`
            out["context"] = [*prompt_tokens, *end.tokens]
        return out

    if not body.prompt and not body.system:
        return await _load_or_unload(request, body, shape)
    model, load_s = await hold(request, body.model, body.keep_alive)
    tokens, stops = await asyncio.to_thread(_generate_prompt, model, body)
    prompt_tokens.extend(tokens)
    return await _respond(request, body, model, tokens, stops, started=started, load_s=load_s, shape=shape)


def _normalized(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else list(vector)


async def _truncated(model: Any, texts: list[str]) -> list[str]:
    """Ollama's truncate=true: an input longer than the context keeps its first tokens."""
    limit = model.engine.n_ctx_slot

    def cut(text: str) -> str:
        tokens = model.engine.tokenize(text, add_bos=True, special=False)
        if len(tokens) <= limit:
            return text
        # A few tokens of margin: the cut text may tokenize a little differently.
        return model.engine.detokenize(tokens[1:max(1, limit - 8)])

    return await asyncio.to_thread(lambda: [cut(t) for t in texts])


@router.post("/api/embed")
async def embed(body: OllamaEmbedRequest, request: Request) -> dict[str, Any]:
    started = time.perf_counter()
    # An empty input only loads the model, as in Ollama.
    texts = ([body.input] if body.input else []) if isinstance(body.input, str) else list(body.input)
    model, load_s = await hold(request, body.model, body.keep_alive)
    if body.truncate:
        texts = await _truncated(model, texts)
    vectors, counts = await embed_texts(model, texts) if texts else ([], [])
    if body.dimensions is not None:
        if vectors and body.dimensions > len(vectors[0]):
            raise ApiError(400, f"dimensions {body.dimensions} is more than the model's {len(vectors[0])}",
                           param="dimensions")
        vectors = [v[: body.dimensions] for v in vectors]
    return {"model": body.model, "embeddings": [_normalized(v) for v in vectors],
            "total_duration": _ns(time.perf_counter() - started), "load_duration": _ns(load_s),
            "prompt_eval_count": sum(counts)}


@router.post("/api/embeddings")
async def embeddings(body: OllamaEmbeddingsRequest, request: Request) -> dict[str, Any]:
    """The older route: one prompt, its vector as the model gives it (not normalized, as Ollama)."""
    model, _ = await hold(request, body.model, body.keep_alive)
    vectors, _ = await embed_texts(model, [body.prompt]) if body.prompt else ([[]], [])
    return {"embedding": [float(x) for x in vectors[0]]}
