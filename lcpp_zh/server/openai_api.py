"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models, /v1/embeddings.

Each route validates its body, builds the prompt (templates for chat), submits it to the model's engine and
answers as OpenAI does, streaming as server-sent events when asked. Nothing here touches llama.cpp itself.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import struct
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from lcpp_zh.errors import EngineError
from lcpp_zh.server import overflow, tools
from lcpp_zh.server.httperrors import ApiError, engine_error
from lcpp_zh.server.leases import hold_model
from lcpp_zh.server.overflow import truncate_chat
from lcpp_zh.server.params import build_sampling
from lcpp_zh.server.prompting import chat_prompt, template_source, text_prompt
from lcpp_zh.server.registry import ModelEntry, ServedModel
from lcpp_zh.server.schemas import ChatRequest, CompletionRequest, EmbeddingRequest, SamplingFields
from lcpp_zh.server.streaming import EngineStreamResponse, collect, openai_reason, sse_events

logger = logging.getLogger(__name__)
router = APIRouter()



def submit(request: Request, model: ServedModel, tokens: list[int], params: Any) -> Any:
    """Hand a prompt to the engine; a full queue is a 503, any other refusal a 400."""
    try:
        return model.engine.submit(tokens, params)
    except EngineError as exc:
        raise engine_error(exc, request.app.state.lcpp.retry_after_s) from exc


def _chat_turn(model: ServedModel, body: ChatRequest, overflow: str = "error"
               ) -> tuple[tools.ToolPlan | None, list[int], list[str], int]:
    """The tool plan (lcpp_zh.server.tools), prompt tokens, stop strings and messages dropped (--context-overflow
    truncate-middle) of a chat request. Blocking (rendering, tokenizing, compiling a tool grammar): run it off
    the event loop."""
    plan = tools.plan_tools(body, template_source(model, body.template), model.engine) if body.tools else None
    messages = tools.chat_messages(body.messages, plan)
    tools.check_control_texts(plan, messages, model.engine)
    jinja_tools = plan.jinja_tools() if plan else None
    tokens, stops = chat_prompt(model, messages, body.template, jinja_tools)
    dropped = 0
    if overflow == "truncate-middle":
        tokens, stops, dropped = truncate_chat(model, body, messages, jinja_tools, tokens, stops)
    return plan, tokens, stops, dropped


async def _prepare(request: Request, body: SamplingFields, tokens: list[int], stops: list[str],
                   model: ServedModel, plan: tools.ToolPlan | None = None) -> Any:
    build = functools.partial(build_sampling, body, n_prompt=len(tokens), n_ctx_slot=model.engine.n_ctx_slot,
                              extra_stops=stops, engine=model.engine)
    # Compiling a grammar (to check it) can take a while: not on the event loop.
    with_grammar = body.grammar or (body.response_format is not None and body.response_format.type != "text")
    params = await asyncio.to_thread(build) if with_grammar else build()
    if plan is not None and plan.grammar:  # checked and trial-compiled by plan_tools
        params = params.replace(grammar=plan.grammar, grammar_triggers=plan.triggers)
    return submit(request, model, tokens, params)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request) -> Any:
    state = request.app.state.lcpp
    model = await hold_model(request, body.model)
    plan, tokens, stops, dropped = await asyncio.to_thread(_chat_turn, model, body, state.context_overflow)
    stream = await _prepare(request, body, tokens, stops, model, plan)
    said = {overflow.HEADER: str(dropped)} if dropped else {}
    ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    base = {"id": ident, "created": created, "model": model.alias}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        extra = {"usage": None} if include_usage else {}
        parser = tools.stream_parser(plan)
        if parser is not None:
            events = tools.tool_sse_events(stream, state.metrics, model.alias, parser, include_usage=include_usage,
                                           chunk_base={**base, "object": "chat.completion.chunk", **extra},
                                           min_interval_s=state.stream_interval_s)
            return _with_headers(EngineStreamResponse(events, stream), said)

        def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
            delta = {"content": text} if text is not None else {}
            return {**base, "object": "chat.completion.chunk", **extra,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        first = {**base, "object": "chat.completion.chunk", **extra,
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}]}
        usage = (lambda u: {**base, "object": "chat.completion.chunk", "choices": [], "usage": u}) if include_usage else None
        events = sse_events(stream, state.metrics, model.alias, chunk=chunk, usage_chunk=usage, first=first,
                            min_interval_s=state.stream_interval_s)
        return _with_headers(EngineStreamResponse(events, stream), said)
    outcome = await collect(stream, request, state.metrics, model.alias)
    message, finish = tools.reply_message(plan, outcome.text, openai_reason(outcome.reason))
    usage = {**outcome.usage(), **({"truncated_messages": dropped} if dropped else {})}
    return JSONResponse({**base, "object": "chat.completion",
                         "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                         "usage": usage}, headers=said)


def _with_headers(response: Any, headers: dict[str, str]) -> Any:
    response.headers.update(headers)
    return response


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Any:
    state = request.app.state.lcpp
    model = await hold_model(request, body.model)
    tokens = await asyncio.to_thread(text_prompt, model, body.prompt)
    stream = await _prepare(request, body, tokens, [], model)
    ident, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    base = {"id": ident, "object": "text_completion", "created": created, "model": model.alias}
    prefix = body.prompt if body.echo and isinstance(body.prompt, str) else ""
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        extra = {"usage": None} if include_usage else {}

        def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
            return {**base, **extra, "choices": [{"index": 0, "text": text or "", "logprobs": None,
                                                  "finish_reason": finish}]}

        first = chunk(prefix, None) if prefix else None
        usage = (lambda u: {**base, "choices": [], "usage": u}) if include_usage else None
        events = sse_events(stream, state.metrics, model.alias, chunk=chunk, usage_chunk=usage, first=first,
                            min_interval_s=state.stream_interval_s)
        return EngineStreamResponse(events, stream)
    outcome = await collect(stream, request, state.metrics, model.alias)
    return JSONResponse({**base, "choices": [{"index": 0, "text": prefix + outcome.text, "logprobs": None,
                                              "finish_reason": openai_reason(outcome.reason)}],
                         "usage": outcome.usage()})


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """Every model this server can serve; `status` says which are loaded (the others load on first use)."""
    return {"object": "list", "data": [_model_card(e) for e in request.app.state.lcpp.registry.entries()]}


def _model_card(entry: ModelEntry) -> dict[str, Any]:
    card = {"id": entry.alias, "object": "model", "owned_by": "lcpp-zh", "template": entry.template_name,
            "status": entry.status, "size_bytes": entry.size_bytes, "expires_at": entry.expires_at}
    m = entry.model
    if m is not None:
        card.update(created=m.created, n_ctx_slot=m.engine.n_ctx_slot, **m.runner_state())
    else:
        card["created"] = int(entry.path.stat().st_mtime) if entry.path and entry.path.exists() else 0
    if entry.error:
        card["error"] = entry.error
    return card


def _encode_vector(vector: list[float], encoding: str) -> list[float] | str:
    """A list of floats, or (the openai client's default) base64 of little-endian float32."""
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return [float(x) for x in vector]


async def embed_texts(model: ServedModel, texts: list[str]) -> tuple[list[list[float]], list[int]]:
    """(vectors, token counts) for /v1/embeddings and Ollama's /api/embed: 400 for an empty or too long
    input, or when the model serves no embeddings."""
    if any(not text for text in texts):
        raise ApiError(400, "input contains an empty string", param="input")
    counts = await asyncio.to_thread(lambda: [len(model.engine.tokenize(t, add_bos=True, special=False))
                                              for t in texts])
    too_long = [i for i, n in enumerate(counts) if n > model.engine.n_ctx_slot]
    if too_long:
        raise ApiError(400, f"input[{too_long[0]}] is too long: {counts[too_long[0]]} tokens, "
                            f"the context holds {model.engine.n_ctx_slot}", param="input",
                       code="context_length_exceeded")
    try:
        vectors = await asyncio.to_thread(model.engine.embed, texts)
    except EngineError as exc:
        raise ApiError(400, f"embeddings are not available for {model.alias}: {exc}", param="model") from exc
    return vectors, counts


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
    model = await hold_model(request, body.model)
    vectors, counts = await embed_texts(model, body.texts())
    data = [{"object": "embedding", "index": i, "embedding": _encode_vector(v, body.encoding_format)}
            for i, v in enumerate(vectors)]
    total = sum(counts)
    return {"object": "list", "data": data, "model": model.alias,
            "usage": {"prompt_tokens": total, "total_tokens": total}}
