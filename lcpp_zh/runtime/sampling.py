"""Sampling settings and the llama.cpp sampler chains built from them.

Defaults are the seed's Chinese Llama 2 chat settings (lcpp_zh.common.sampling_defaults). This module validates
settings, builds chains and runs a chain over its own candidate array for grammar requests; it does not decode or
own a context (lcpp_zh.runtime.engine does).
"""

from __future__ import annotations

import ctypes
import logging
import math
import random
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from lcpp_zh.common.sampling_defaults import SEED_SAMPLING
from lcpp_zh.errors import EngineError
from lcpp_zh.runtime.grammar import compile_grammar

logger = logging.getLogger(__name__)


# Triggers are searched in the text at every token: a few short ones.
MAX_TRIGGERS = 8
MAX_TRIGGER_CHARS = 64


@dataclass
class SamplingParams:
    """How one request samples; `seed=None` draws a fresh seed per request."""

    temperature: float = SEED_SAMPLING.temperature
    top_p: float = SEED_SAMPLING.top_p
    top_k: int = SEED_SAMPLING.top_k
    min_p: float = SEED_SAMPLING.min_p
    repeat_penalty: float = SEED_SAMPLING.repeat_penalty
    repeat_last_n: int = SEED_SAMPLING.repeat_last_n
    presence_penalty: float = SEED_SAMPLING.presence_penalty
    frequency_penalty: float = SEED_SAMPLING.frequency_penalty
    seed: int | None = None
    max_tokens: int = SEED_SAMPLING.max_tokens
    stop: list[str] = field(default_factory=list)
    grammar: str | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    # A lazy grammar (tool calls with tool_choice auto): free text until one of these strings is generated,
    # then `grammar` constrains what follows it (lcpp_zh.runtime.lazy_grammar). Empty: the grammar applies
    # from the first token.
    grammar_triggers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # JSON (a saved chat, an HTTP body) has string keys.
        self.logit_bias = {int(token): float(bias) for token, bias in self.logit_bias.items()}
        self.grammar_triggers = list(self.grammar_triggers)
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
            (all(isinstance(t, str) and 0 < len(t) <= MAX_TRIGGER_CHARS for t in self.grammar_triggers)
             and len(self.grammar_triggers) <= MAX_TRIGGERS, "grammar_triggers must be a few short strings"),
            (not self.grammar_triggers or bool(self.grammar), "grammar_triggers need a grammar"),
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

    Order follows llama.cpp's common sampler: logit bias and penalties (lcpp_zh.runtime.logit_edits applies those
    to the logits before the chain runs), grammar, top-k, top-p, min-p, temperature, dist. Temperature 0
    means greedy (bias and penalties still apply, as in llama.cpp).
    """
    import llama_cpp

    # Checked against the parser's limits first: a grammar that would overflow its stack never reaches it.
    # A lazy grammar is not in the chain: lcpp_zh.runtime.lazy_grammar applies it once triggered.
    eager = params.grammar and not params.grammar_triggers
    grammar = compile_grammar(params.grammar, vocab) if eager else None
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    if chain is None:
        if grammar:
            llama_cpp.llama_sampler_free(grammar)
        raise EngineError("llama.cpp could not create a sampler chain")

    def add(sampler: Any) -> None:
        llama_cpp.llama_sampler_chain_add(chain, sampler)

    if grammar:
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


# llama_token_data: {int32 id; float logit; float p}, 12 bytes, as an array numpy can fill.
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
NO_GRAMMAR_TOKEN = ("the grammar allows no token here: it rejects every candidate (a grammar that asks for text no "
                    "token can produce, or that cannot end, e.g. one matching only \\u0000)")


class CandidateSampler:
    """Runs a chain over a candidate array built here, so that the selected token can be checked before
    llama_sampler_accept: llama.cpp's llama_sampler_sample accepts whatever its chain selected, and a grammar
    that rejected every candidate then throws a C++ exception ("Unexpected empty grammar stack") that
    aborts the process through ctypes. Used for grammar requests; others keep llama_sampler_sample.
    """

    def __init__(self, n_vocab: int) -> None:
        import llama_cpp

        self._llama = llama_cpp
        self.data = np.zeros(n_vocab, dtype=TOKEN_DATA)
        self.ids = np.arange(n_vocab, dtype=np.int32)
        self.array = llama_cpp.llama_token_data_array()
        self._pointer = self.data.ctypes.data_as(llama_cpp.llama_token_data_p)

    def sample(self, chain: Any, logits: np.ndarray) -> int:
        """Select and accept a token for float32 `logits` (by token id); EngineError, with nothing
        accepted, when the grammar (the chain's first sampler) set every logit to -inf."""
        data, array = self.data, self.array
        data["id"] = self.ids  # samplers sort the array in place
        data["logit"] = logits
        data["p"] = 0.0
        array.data, array.size, array.selected, array.sorted = self._pointer, len(data), -1, False
        self._llama.llama_sampler_apply(chain, ctypes.byref(array))
        index = array.selected
        # The grammar sets rejected candidates to -inf; the chain selects one of those only when nothing
        # else is left (softmax of all -inf is NaN, greedy takes the first). A tiny temperature may turn an
        # allowed logit into +inf, which is fine.
        if not 0 <= index < array.size or not array.data[index].logit > -math.inf:
            raise EngineError(NO_GRAMMAR_TOKEN)
        token = int(array.data[index].id)
        self._llama.llama_sampler_accept(chain, token)
        return token
