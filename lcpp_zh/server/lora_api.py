"""Runtime LoRA routes, as llama-server's /lora-adapters: GET /v1/lora lists a model's adapters and
POST /v1/lora sets their scales without reloading (adapters left out of the list go to 0, as upstream).

Only request handling lives here: lcpp_zh.runtime.lora checks the entries and the engine applies them between
decoding steps. `model` (query, or body in the object form) picks a served model; default: the first one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request

from lcpp_zh.errors import LcppError
from lcpp_zh.server.httperrors import ApiError
from lcpp_zh.server.leases import hold_model

logger = logging.getLogger(__name__)
router = APIRouter()


SHAPE = 'the body must be a list of {"id" or "name", "scale"}, or {"model": ALIAS, "lora": [...]}'


def read_entries(body: Any, model: str | None) -> tuple[list[Any], str | None]:
    """(entries, model alias) from llama-server's bare array, or from the object form that names a model.
    Entries themselves are checked by LoraSet.set_scales."""
    if isinstance(body, list):
        return body, model
    if (isinstance(body, dict) and isinstance(body.get("lora"), list) and set(body) <= {"model", "lora"}
            and isinstance(body.get("model"), (str, type(None)))):
        return body["lora"], body.get("model") or model
    raise ApiError(400, SHAPE, param="lora")


@router.get("/v1/lora")
async def lora_list(request: Request, model: str | None = None) -> list[dict[str, Any]]:
    """[{"id", "name", "path", "scale", "alpha"}] for the model; [] when it has no adapters."""
    served = await hold_model(request, model)
    return served.engine.lora_adapters()


@router.post("/v1/lora")
async def lora_set(request: Request, body: Annotated[Any, Body()], model: str | None = None) -> dict[str, Any]:
    """Set the scales; every entry is checked before any scale changes, so a bad one changes nothing."""
    entries, alias = read_entries(body, model)
    served = await hold_model(request, alias)
    try:
        # Waits for the current decoding step to end: off the event loop.
        adapters = await asyncio.to_thread(served.engine.set_lora_scales, entries)
    except LcppError as exc:  # unknown adapter, bad scale, no adapters loaded
        raise ApiError(400, str(exc), param="lora", code="invalid_lora") from exc
    logger.info("%s: LoRA scales now %s", served.alias, {a["name"]: a["scale"] for a in adapters})
    return {"success": True, "model": served.alias, "adapters": adapters}
