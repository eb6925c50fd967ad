"""One sequence slot of the engine: its cached tokens (the prefix cache) and the request it is serving.

A slot turns sampled tokens into stream events: incremental UTF-8 detokenization, stop strings held back
until they can be ruled out, max_tokens, timing. It never calls llama.cpp itself; the scheduler passes
in the backend's functions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lcpp_zh.errors import EngineError
from lcpp_zh.runtime.detokenizer import IncrementalDetokenizer, StopMatcher
from lcpp_zh.runtime.sampling import SamplingParams
from lcpp_zh.runtime.stream import Finished, Stream, TextDelta

logger = logging.getLogger(__name__)

# A character is at most 4 UTF-8 bytes: after max_tokens, this many more tokens may finish a split one.
MAX_EXTRA_TOKENS_FOR_CHARACTER = 4


@dataclass
class Request:
    tokens: list[int]
    params: SamplingParams
    stream: Stream
    cache_key: str | None = None
    t_submit: float = field(default_factory=time.perf_counter)


def check_request(tokens: list[int], params: SamplingParams, *, n_ctx_slot: int, n_vocab: int | None = None) -> None:
    """EngineError for a request no slot can serve: an empty prompt, one that leaves no room in a slot's
    context, or (given the vocabulary size) token ids or logit_bias ids outside the vocabulary. The one
    check behind Engine.submit, the scheduler and the server's runner client."""
    if not tokens:
        raise EngineError("empty prompt: nothing to continue from")
    if len(tokens) >= n_ctx_slot:
        raise EngineError(f"prompt of {len(tokens)} tokens does not fit: one request holds at most "
                          f"{n_ctx_slot} tokens (the shared context, up to the model's training context); "
                          "raise --ctx or shorten the prompt")
    if n_vocab is None:
        return
    if any(t < 0 or t >= n_vocab for t in tokens):
        raise EngineError(f"prompt token ids must lie in [0, {n_vocab})")
    outside = [t for t in params.logit_bias if t >= n_vocab]
    if outside:
        raise EngineError(f"logit_bias: token {outside[0]} is not in the vocabulary (ids 0 to {n_vocab - 1})")


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix; compared in blocks (slice equality runs in C), as the prompt cache
    compares every new prompt with every saved one."""
    n = min(len(a), len(b))
    i = 0
    step = 256
    while i < n:
        j = min(i + step, n)
        if list(a[i:j]) != list(b[i:j]):
            break
        i = j
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Slot:
    """Sequence `seq_id`; `tokens` are exactly the tokens held in the KV cache for it."""

    def __init__(self, seq_id: int, n_ctx: int) -> None:
        self.seq_id = seq_id
        self.n_ctx = n_ctx
        self.tokens: list[int] = []
        self.cache_key: str | None = None
        self.last_used = 0.0
        self.req: Request | None = None
        self.sampler: Any = None
        self.pending: list[int] = []   # prompt tokens still to evaluate
        self.next_token: int | None = None  # sampled, to be evaluated in the next batch
        self.cached = 0
        self.stale = False  # the context changed (LoRA scales) while this slot was busy
        self.paused = False  # its cells were taken for older requests; `pending` holds all its tokens
        self.t_start = 0.0

    @property
    def busy(self) -> bool:
        return self.req is not None

    @property
    def prefilling(self) -> bool:
        return self.req is not None and bool(self.pending) and not self.paused

    def start(self, req: Request, keep: int, sampler: Any, piece: Callable[[int], bytes]) -> None:
        """Serve `req`, reusing the first `keep` cached tokens (the caller trimmed the KV cache)."""
        self.req = req
        self.cache_key = req.cache_key
        self.tokens = self.tokens[:keep]
        self.cached = keep
        self.pending = list(req.tokens[keep:])
        self.next_token = None
        self.paused = False
        self.sampler = sampler
        self.detok = IncrementalDetokenizer(piece)
        self.stops = StopMatcher(req.params.stop)
        self.n_generated = 0
        self.generated: list[int] = []
        self.n_unreported = 0
        self.t_start = time.perf_counter()
        self.t_first: float | None = None
        self.n_drafted = self.n_accepted = 0  # speculative decoding (the scheduler counts)

    def on_token(self, token: int, is_eog: bool) -> Finished | None:
        """Account for a sampled token; returns the Finished event when the request ends with it."""
        req = self.req
        assert req is not None
        now = time.perf_counter()
        self.n_generated += 1
        self.generated.append(token)
        self.n_unreported += 1
        if self.t_first is None:
            self.t_first = now
        if is_eog:
            return self.finish("stop")
        out, stopped = self.stops.push(self.detok.feed(token))
        self._emit(out)
        if stopped:
            return self.finish("stop")
        room = self.n_ctx - len(self.tokens) - 1
        over = self.n_generated - req.params.max_tokens
        if over >= 0:
            # Finish a character split over byte tokens rather than cut it (or print U+FFFD).
            if self.detok.pending_bytes and over < MAX_EXTRA_TOKENS_FOR_CHARACTER and room >= 0:
                self.next_token = token
                return None
            return self.finish("length")
        if room < 0:
            return self.finish("length")
        self.next_token = token
        return None

    def _emit(self, text: str) -> None:
        if text and self.req is not None:
            self.req.stream.put(TextDelta(text, self.n_unreported))
            self.n_unreported = 0

    def finish(self, reason: str, error: str | None = None) -> Finished:
        """End the request: flush held-back text (unless a stop string matched) and send Finished."""
        req = self.req
        assert req is not None
        if reason != "error":
            tail = self.detok.flush()
            out, _ = self.stops.push(tail)
            self._emit(out + self.stops.flush())
        now = time.perf_counter()
        ttft = (self.t_first - req.t_submit) if self.t_first is not None else 0.0
        gen_time = now - self.t_first if self.t_first is not None else 0.0
        tps = (self.n_generated - 1) / gen_time if self.n_generated > 1 and gen_time > 0 else 0.0
        event = Finished(reason=reason, prompt_tokens=len(req.tokens), completion_tokens=self.n_generated,
                         cached_tokens=self.cached, ttft_s=ttft, tokens_per_s=tps, error=error,
                         stop=self.stops.stopped, tokens=tuple(self.generated),
                         draft_tokens=self.n_drafted, draft_accepted=self.n_accepted)
        req.stream.put(event)
        self.req = None
        self.pending = []
        self.next_token = None
        self.paused = False
        self.last_used = now
        return event
