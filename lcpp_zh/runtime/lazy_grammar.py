"""A lazy grammar: free text until a trigger string is generated, then a grammar for what follows it.

llama-server does this with llama.cpp's lazy grammar sampler; that sampler matches its triggers with a
std::regex over everything generated (recursion per character: long answers overflow the stack) and feeds the
text after a trigger to the grammar with a C++ exception when it does not fit, which aborts the process
through ctypes. Here the trigger is found in Python, and a token that would run past a trigger (`<tool_call>{`
as one token) is never chosen, so the grammar always starts clean. Sampling only; no decoding.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from lcpp_zh.errors import EngineError
from lcpp_zh.runtime.grammar import compile_grammar
from lcpp_zh.runtime.sampling import NO_GRAMMAR_TOKEN, CandidateSampler, SamplingParams

logger = logging.getLogger(__name__)

# Tokens that run past a trigger are masked one at a time, then (rarely) all at once with a vocabulary scan.
_RESAMPLE_TRIES = 16
_FREE, _TRIGGERED, _OVERRUN = 0, 1, 2


class LazyGrammarSampler(CandidateSampler):
    """A CandidateSampler whose grammar (not in the chain) starts applying after a trigger string."""

    def __init__(self, n_vocab: int, params: SamplingParams, vocab: Any, piece: Callable[[int], bytes]) -> None:
        super().__init__(n_vocab)
        self._text = params.grammar or ""
        self._vocab = vocab
        self._piece = piece
        self._triggers = [t.encode("utf-8") for t in params.grammar_triggers]
        self._keep = max(len(t) for t in self._triggers) - 1
        self._tail = b""  # the last bytes generated: a trigger may be split over tokens
        self.grammar: Any = None  # llama.cpp's grammar sampler, made when a trigger is generated

    def close(self) -> None:
        if self.grammar is not None:
            self._llama.llama_sampler_free(self.grammar)
            self.grammar = None

    def __del__(self) -> None:
        self.close()

    def sample(self, chain: Any, logits: np.ndarray) -> int:
        if self.grammar is not None:
            token = self._select(chain, logits, grammar=self.grammar)
            self._llama.llama_sampler_accept(self.grammar, token)
            self._llama.llama_sampler_accept(chain, token)
            return token
        for _ in range(_RESAMPLE_TRIES):
            token = self._select(chain, logits)
            state = self._state(token)
            if state != _OVERRUN:
                break
            logits[token] = -math.inf
        else:
            self._mask_overruns(logits)
            token = self._select(chain, logits)
            state = self._state(token)
        self._llama.llama_sampler_accept(chain, token)
        self._tail = (self._tail + self._piece(token))[-self._keep:] if self._keep else b""
        if state == _TRIGGERED:
            logger.debug("lazy grammar triggered")
            self._tail = b""
            self.grammar = compile_grammar(self._text, self._vocab)
        return token

    def _select(self, chain: Any, logits: np.ndarray, grammar: Any = None) -> int:
        """The token the chain (after `grammar`) selects for `logits`, nothing accepted; EngineError when
        every candidate is rejected."""
        data, array = self.data, self.array
        data["id"] = self.ids
        data["logit"] = logits
        data["p"] = 0.0
        array.data, array.size, array.selected, array.sorted = self._pointer, len(data), -1, False
        if grammar is not None:
            self._llama.llama_sampler_apply(grammar, self._byref(array))
        self._llama.llama_sampler_apply(chain, self._byref(array))
        index = array.selected
        if not 0 <= index < array.size or not array.data[index].logit > -math.inf:
            raise EngineError(NO_GRAMMAR_TOKEN)
        return int(array.data[index].id)

    @staticmethod
    def _byref(array: Any) -> Any:
        import ctypes

        return ctypes.byref(array)

    def _state(self, token: int) -> int:
        """Whether `token` leaves the text free, ends exactly at a trigger, or runs past one."""
        text = self._tail + self._piece(token)
        found = [(text.find(t), len(t)) for t in self._triggers if t in text]
        if not found:
            return _FREE
        start, size = min(found)  # the first trigger generated is the one that counts
        return _TRIGGERED if start + size == len(text) else _OVERRUN

    def _mask_overruns(self, logits: np.ndarray) -> None:
        """Mask every token that would run past a trigger after the current text (a scan of the vocabulary,
        once in a rare answer)."""
        for token in range(len(logits)):
            if logits[token] > -math.inf and self._state(token) == _OVERRUN:
                logits[token] = -math.inf


def make_candidates(params: SamplingParams, n_vocab: int, vocab: Any,
                    piece: Callable[[int], bytes]) -> CandidateSampler | None:
    """The candidate sampler a request needs: lazy for grammar triggers, plain for a grammar, else none."""
    if params.grammar and params.grammar_triggers:
        return LazyGrammarSampler(n_vocab, params, vocab, piece)
    return CandidateSampler(n_vocab) if params.grammar else None
