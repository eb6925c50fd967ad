"""The seed's API (FlagAlpha's accelerate_server.py): POST /generate, so accelerate_client.py keeps working.

Body keys read: history [{role: Human|Assistant, content}], system_prompt, max_new_tokens, top_p, temperature;
everything else the client sends (n, best_of, top_k, stop, ...) is ignored, as the seed did. The answer is
{"response", "status": 200, "time": "YYYY-mm-dd HH:MM:SS"}; generation goes through the same engine as /v1.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

from fastapi import APIRouter, Request

from lcpp_zh.server.httperrors import ApiError
from lcpp_zh.server.leases import hold_model
from lcpp_zh.server.openai_api import submit
from lcpp_zh.server.params import build_sampling
from lcpp_zh.server.prompting import chat_prompt
from lcpp_zh.server.schemas import SamplingFields, SeedGenerateRequest
from lcpp_zh.server.streaming import collect

logger = logging.getLogger(__name__)
router = APIRouter()

# The seed's roles; "Assitant" is the spelling in accelerate_client.py's own multi-turn example.
_SEED_ROLES = {"human": "user", "user": "user", "assistant": "assistant", "assitant": "assistant",
               "system": "system"}


def seed_messages(body: SeedGenerateRequest) -> list[dict[str, str]]:
    """The seed's history (and system prompt) as chat messages."""
    messages = []
    if body.system_prompt and body.system_prompt.strip():
        messages.append({"role": "system", "content": body.system_prompt.strip()})
    for i, turn in enumerate(body.history):
        role = _SEED_ROLES.get(turn.role.strip().lower())
        if role is None:
            raise ApiError(400, f"history[{i}]: role {turn.role!r} is not Human or Assistant", param=f"history.{i}.role")
        # The seed strips each turn before formatting it.
        messages.append({"role": role, "content": turn.content.strip()})
    return messages


@router.post("/generate")
async def generate(body: SeedGenerateRequest, request: Request) -> dict[str, Any]:
    state = request.app.state.lcpp
    model = await hold_model(request, body.model)
    tokens, stops = await asyncio.to_thread(chat_prompt, model, seed_messages(body), None)
    fields = SamplingFields(max_tokens=body.max_new_tokens, top_p=body.top_p, temperature=body.temperature)
    params = build_sampling(fields, n_prompt=len(tokens), n_ctx_slot=model.engine.n_ctx_slot, extra_stops=stops,
                            engine=model.engine)
    outcome = await collect(submit(request, model, tokens, params), request, state.metrics, model.alias)
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    return {"response": outcome.text, "status": 200, "time": now}
