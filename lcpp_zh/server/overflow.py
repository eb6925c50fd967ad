"""--context-overflow truncate-middle: a chat history longer than the context loses whole old turns, after the
system prompt(s) and before the latest turn, instead of being refused (the default, `error`).

llama-server shifts the context silently; here the answer says what was dropped (`usage.truncated_messages`
and the X-Context-Truncated header). Only message lists are cut; rendering and tokenizing are the caller's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

OVERFLOW_MODES = ("error", "truncate-middle")
HEADER = "X-Context-Truncated"


def turn_starts(messages: list[dict[str, Any]]) -> tuple[int, list[int]]:
    """The index after the leading system messages, and where each later turn begins (a user message and the
    assistant and tool messages that answer it form one turn)."""
    head = 0
    while head < len(messages) and messages[head].get("role") in ("system", "developer"):
        head += 1
    starts = [i for i in range(head, len(messages)) if messages[i].get("role") == "user" or i == head]
    return head, starts


def fit_history(messages: list[dict[str, Any]], fits: Callable[[list[dict[str, Any]]], bool]
                ) -> tuple[list[dict[str, Any]], int]:
    """The messages with the fewest oldest turns dropped for `fits` to accept them, and how many messages were
    dropped. The system prompt and the last turn always stay; when even those do not fit, the last turn
    alone is returned and the caller's usual check refuses it."""
    if fits(messages):
        return messages, 0
    head, starts = turn_starts(messages)
    if len(starts) <= 1:
        return messages, 0
    # Dropping more turns never makes the prompt longer: binary search for the fewest that fit.
    lo, hi = 1, len(starts) - 1  # drop turns starts[0:k], keep from starts[k]
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(messages[:head] + messages[starts[mid]:]):
            hi = mid
        else:
            lo = mid + 1
    kept = messages[:head] + messages[starts[lo]:]
    dropped = len(messages) - len(kept)
    logger.info("context overflow: dropped %d old messages of %d", dropped, len(messages))
    return kept, dropped


def truncate_chat(model: Any, body: Any, messages: list[dict[str, Any]], jinja_tools: Any,
                  tokens: list[int], stops: list[str]) -> tuple[list[int], list[str], int]:
    """A chat request's prompt with old turns dropped until it leaves room for the answer (max_tokens, at
    most a quarter of the context); returns the prompt tokens, stop strings and the messages dropped."""
    from lcpp_zh.runtime.sampling import SamplingParams
    from lcpp_zh.server.prompting import chat_prompt

    limit = model.engine.n_ctx_slot
    wanted = body.max_completion_tokens or body.max_tokens or SamplingParams().max_tokens
    limit -= max(1, min(wanted, limit // 4))
    if len(tokens) <= limit:
        return tokens, stops, 0

    def fits(candidate: list[dict[str, Any]]) -> bool:
        return len(chat_prompt(model, candidate, body.template, jinja_tools)[0]) <= limit

    kept, dropped = fit_history(messages, fits)
    if not dropped:
        return tokens, stops, 0
    tokens, stops = chat_prompt(model, kept, body.template, jinja_tools)
    return tokens, stops, dropped
