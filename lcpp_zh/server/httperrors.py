"""HTTP errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}} with the matching status.

`ApiError` is raised by route code; the handlers installed by `install_error_handlers` also turn validation
errors, engine errors and stray exceptions into that shape, so a client never sees an HTML page or a traceback.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lcpp_zh.errors import EngineError, EngineUnavailable, LcppError
from lcpp_zh.runtime.scheduler import QueueFull

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    500: "server_error",
    503: "server_unavailable",
}


class ApiError(Exception):
    """An error answered to the client as is."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None, path: str = "") -> JSONResponse:
    return JSONResponse(error_body_for(path, status, message, param, code), status_code=status, headers=headers)


# Ollama's native API answers errors as {"error": "message"}; its clients read that field as the message.
OLLAMA_PREFIX = "/api/"


def error_body_for(path: str, status: int, message: str, param: str | None = None,
                   code: str | None = None) -> dict[str, Any]:
    """The error body in the shape the route's clients expect: Ollama's under /api/, OpenAI's elsewhere."""
    if path.startswith(OLLAMA_PREFIX):
        return {"error": message}
    return error_body(status, message, param, code)


def engine_error(exc: EngineError, retry_after_s: int = 1) -> ApiError:
    """Map an engine refusal to HTTP: a full queue is 503 with Retry-After, anything else the client's fault."""
    if isinstance(exc, QueueFull):
        return ApiError(503, str(exc), code="queue_full", headers={"Retry-After": str(retry_after_s)})
    if isinstance(exc, EngineUnavailable):
        return ApiError(503, str(exc), code="model_unavailable", headers={"Retry-After": str(max(retry_after_s, 2))})
    return ApiError(400, str(exc), code="invalid_request")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    where = f"{param}: " if param else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}{first.get('msg', 'invalid value')}{more}", param


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error in OpenAI's shape (Ollama's under /api/)."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, param=exc.param, code=exc.code, headers=exc.headers,
                              path=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        # 400 like OpenAI for every invalid body (FastAPI's default is 422), so clients map it alike.
        return error_response(400, message, param=param, path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None),
                              path=request.url.path)

    @app.exception_handler(LcppError)
    async def _lcpp(request: Request, exc: LcppError) -> JSONResponse:
        if isinstance(exc, EngineError):
            err = engine_error(exc)
            return error_response(err.status, err.message, code=err.code, headers=err.headers, path=request.url.path)
        return error_response(400, str(exc), path=request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error: %s", exc)
        return error_response(500, f"internal error: {type(exc).__name__}", path=request.url.path)


def sse_error(status: int, message: str) -> bytes:
    """An error sent inside an already started event stream (the status line has gone out)."""
    return f"data: {json.dumps(error_body(status, message), ensure_ascii=False)}\n\n".encode()
