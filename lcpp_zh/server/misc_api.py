"""Service routes: /health, /metrics, /tokenize, /detokenize, /v1/templates and the web chat page.

The page is three fixed files shipped in lcpp_zh/server/static/, served from a table built at start-up:
no request path is ever turned into a path on disk.
"""

from __future__ import annotations

import asyncio
import logging
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from lcpp_zh.server.httperrors import ApiError
from lcpp_zh.server.prompting import template_names
from lcpp_zh.server.schemas import DetokenizeRequest, TokenizeRequest

logger = logging.getLogger(__name__)
router = APIRouter()

_PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
               "/index.html": ("index.html", "text/html; charset=utf-8"),
               "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
               "/static/style.css": ("style.css", "text/css; charset=utf-8")}


def _load_page() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("lcpp_zh.server") / "static"
    return {route: ((folder / name).read_bytes(), media) for route, (name, media) in _PAGE_FILES.items()}


_PAGE = _load_page()


def _page_route(route: str) -> Any:
    async def serve_page() -> Response:
        body, media = _PAGE[route]
        return Response(body, media_type=media, headers={"Cache-Control": "no-cache"})

    return serve_page


for _route in _PAGE_FILES:
    router.add_api_route(_route, _page_route(_route), methods=["GET"], include_in_schema=False)


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> Response:
    return Response(status_code=204)


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    registry = request.app.state.lcpp.registry
    if registry.state == "ready":
        return JSONResponse({"status": "ok", "models": registry.aliases})
    if registry.state == "failed":
        return JSONResponse({"status": "error", "error": registry.error}, status_code=503)
    return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "2"})


@router.get("/metrics")
async def metrics(request: Request) -> PlainTextResponse:
    state = request.app.state.lcpp
    models = state.registry.all() if state.registry.state == "ready" else []
    text = state.metrics.render(models)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    model = request.app.state.lcpp.registry.get(body.model)
    tokens = await asyncio.to_thread(model.engine.tokenize, body.content, add_bos=body.add_special, special=True)
    return {"tokens": list(tokens), "model": model.alias}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict[str, Any]:
    model = request.app.state.lcpp.registry.get(body.model)
    n_vocab = getattr(model.engine, "n_vocab", None)
    if isinstance(n_vocab, int) and any(t < 0 or t >= n_vocab for t in body.tokens):
        raise ApiError(400, f"token ids must lie in [0, {n_vocab})", param="tokens")
    text = await asyncio.to_thread(model.engine.detokenize, body.tokens)
    return {"content": text, "model": model.alias}


@router.get("/v1/templates")
async def templates(request: Request) -> dict[str, Any]:
    """Template names for the web page's picker, with each model's default."""
    registry = request.app.state.lcpp.registry
    registry.get(None)
    return {"templates": template_names(), "models": {m.alias: m.template_name for m in registry.all()}}
