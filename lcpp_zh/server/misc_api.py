"""Service routes: /health, /metrics, /tokenize, /detokenize, /v1/templates, /v1/defaults and the web chat page.

The page is the files shipped in lcpp_zh/server/static/ (its own scripts and the vendored libraries), served
from a table built at start-up (lcpp_zh.server.page_files): no request path is ever turned into a path on disk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from lcpp_zh.runtime.grammar import MAX_GRAMMAR_BYTES
from lcpp_zh.runtime.sampling import SamplingParams
from lcpp_zh.server import schemas
from lcpp_zh.server.httperrors import ApiError
from lcpp_zh.server.leases import hold_model
from lcpp_zh.server.metrics import CONTENT_TYPE
from lcpp_zh.server.page_files import load_page_files, page_response
from lcpp_zh.server.prompting import template_names
from lcpp_zh.server.schemas import DetokenizeRequest, TokenizeRequest

logger = logging.getLogger(__name__)
router = APIRouter()

PAGE_FILES = load_page_files()


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
@router.api_route("/index.html", methods=["GET", "HEAD"], include_in_schema=False)
@router.api_route("/static/{name:path}", methods=["GET", "HEAD"], include_in_schema=False)
async def page_file(request: Request) -> Response:
    """The page and its scripts, styles and fonts, looked up by URL path in the table read at start-up."""
    file = PAGE_FILES.get(request.url.path)
    if file is None:
        raise ApiError(404, f"no such file: {request.url.path}")
    return page_response(file, request.headers.get("if-none-match"))


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> Response:
    return Response(status_code=204)


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 when every loaded model's runner is up (none loaded is fine: models load on request); 503 while the
    command line's models load, while a runner restarts, or when one has failed."""
    registry = request.app.state.lcpp.registry
    if registry.state == "failed":
        return JSONResponse({"status": "error", "error": registry.error}, status_code=503)
    if registry.state != "ready":
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "2"})
    models = {m.alias: m.runner_state() for m in registry.all()}
    states = {entry["state"] for entry in models.values()}
    if states <= {"ready"}:
        return JSONResponse({"status": "ok", "models": models})
    status = "error" if "failed" in states else "restarting"
    headers = {} if status == "error" else {"Retry-After": "2"}
    return JSONResponse({"status": status, "models": models}, status_code=503, headers=headers)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    body = await asyncio.to_thread(request.app.state.lcpp.metrics.render)
    return Response(body, media_type=CONTENT_TYPE)


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    model = await hold_model(request, body.model)
    tokens = await asyncio.to_thread(model.engine.tokenize, body.content, add_bos=body.add_special, special=True)
    return {"tokens": list(tokens), "model": model.alias}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict[str, Any]:
    model = await hold_model(request, body.model)
    n_vocab = getattr(model.engine, "n_vocab", None)
    if isinstance(n_vocab, int) and any(t < 0 or t >= n_vocab for t in body.tokens):
        raise ApiError(400, f"token ids must lie in [0, {n_vocab})", param="tokens")
    text = await asyncio.to_thread(model.engine.detokenize, body.tokens)
    return {"content": text, "model": model.alias}


@router.get("/v1/templates")
async def templates(request: Request) -> dict[str, Any]:
    """Template names for the web page's picker, with each model's default."""
    entries = request.app.state.lcpp.registry.entries()
    return {"templates": template_names(), "models": {e.alias: e.template_name for e in entries}}


def _sampling_defaults() -> dict[str, Any]:
    """SamplingParams' own defaults (the one table of them), JSON-ready."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(SamplingParams):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return values


@router.get("/v1/defaults")
async def defaults() -> dict[str, Any]:
    """The sampling defaults and the request limits, so that the web page repeats neither."""
    return {
        "sampling": _sampling_defaults(),
        "limits": {
            "max_stop_strings": schemas.MAX_STOP_STRINGS,
            "max_stop_chars": schemas.MAX_STOP_CHARS,
            "max_grammar_bytes": MAX_GRAMMAR_BYTES,
        },
    }
