"""Sampling settings and the llama.cpp sampler chains built from them.

Defaults follow the seed's Chinese Llama 2 chat settings (temperature 0.3, top_p 0.95, top_k 50,
repetition penalty 1.3, 512 new tokens). This module validates settings and builds chains; it does not
decode or own a context (lcpp_zh.engine does).
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from lcpp_zh.errors import EngineError

logger = logging.getLogger(__name__)


@dataclass
class SamplingParams:
    """How one request samples; `seed=None` draws a fresh seed per request."""

    temperature: float = 0.3
    top_p: float = 0.95
    top_k: int = 50
    min_p: float = 0.0
    repeat_penalty: float = 1.3
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int = 512
    stop: list[str] = field(default_factory=list)
    grammar: str | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit

    def __post_init__(self) -> None:
        # JSON (a saved chat, an HTTP body) has string keys.
        self.logit_bias = {int(token): float(bias) for token, bias in self.logit_bias.items()}
        self.validate()

    def validate(self) -> None:
        """Raise EngineError for a setting llama.cpp would reject or misbehave on."""
        checks = [
            (math.isfinite(self.temperature) and self.temperature >= 0, "temperature must be >= 0"),
            (0.0 < self.top_p <= 1.0, "top_p must lie in (0, 1]"),
            (self.top_k >= 0, "top_k must be >= 0 (0 disables it)"),
            (0.0 <= self.min_p <= 1.0, "min_p must lie in [0, 1]"),
            (math.isfinite(self.repeat_penalty) and self.repeat_penalty > 0, "repeat_penalty must be > 0"),
            (self.repeat_last_n >= -1, "repeat_last_n must be >= -1"),
            (math.isfinite(self.presence_penalty), "presence_penalty must be finite"),
            (math.isfinite(self.frequency_penalty), "frequency_penalty must be finite"),
            (self.max_tokens >= 1, "max_tokens must be >= 1"),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty text"),
            (all(t >= 0 and not math.isnan(b) for t, b in self.logit_bias.items()),
             "logit_bias needs token ids >= 0 and numeric biases"),
        ]
        for ok, message in checks:
            if not ok:
                raise EngineError(f"bad sampling setting: {message}")

    def replace(self, **changes: Any) -> SamplingParams:
        """A copy with some settings changed (validated)."""
        return SamplingParams(**{**asdict(self), **changes})

    @classmethod
    def names(cls) -> list[str]:
        """The setting names, e.g. for the REPL's /set."""
        return [f.name for f in fields(cls)]


def resolve_seed(params: SamplingParams) -> int:
    """The seed a request uses: its own, or a random one (llama.cpp's LLAMA_DEFAULT_SEED means random too)."""
    return params.seed if params.seed is not None else random.getrandbits(31)


def build_chain(params: SamplingParams, *, vocab: Any) -> Any:
    """A llama.cpp sampler chain for `params`; the caller frees it with llama_sampler_free.

    Order follows llama.cpp's common sampler: logit bias and penalties (lcpp_zh.logit_edits applies those
    to the logits before the chain runs), grammar, top-k, top-p, min-p, temperature, dist. Temperature 0
    means greedy (bias and penalties still apply, as in llama.cpp).
    """
    import llama_cpp

    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    if chain is None:
        raise EngineError("llama.cpp could not create a sampler chain")

    def add(sampler: Any) -> None:
        llama_cpp.llama_sampler_chain_add(chain, sampler)

    if params.grammar:
        grammar = llama_cpp.llama_sampler_init_grammar(vocab, params.grammar.encode("utf-8"), b"root")
        if not grammar:
            llama_cpp.llama_sampler_free(chain)
            raise EngineError("the grammar could not be parsed (GBNF with a `root` rule expected)")
        add(grammar)
    if params.temperature <= 0.0:
        add(llama_cpp.llama_sampler_init_greedy())
        return chain
    if params.top_k > 0:
        add(llama_cpp.llama_sampler_init_top_k(params.top_k))
    if params.top_p < 1.0:
        add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0.0:
        add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
    add(llama_cpp.llama_sampler_init_temp(params.temperature))
    add(llama_cpp.llama_sampler_init_dist(resolve_seed(params)))
    return chain
