"""The first two steps of llama.cpp's sampler chain, logit bias and then the repetition penalties, done in
place on the context's logits for just the tokens they touch.

llama.cpp's penalties sampler looks every vocabulary entry up in a hash map: 49,152 lookups a token for
SmolLM2, about 0.15 ms, which is 5% of batched decoding on two cores (its header says to avoid it on the
full vocabulary). Here only the tokens in the window are read and written, with the same float32
arithmetic, so the logits that reach the rest of the chain are bit-identical (tests/runtime/test_logit_edits.py
compares them with llama.cpp's own samplers). It also gives repeat_last_n = -1 its documented meaning, the
whole sequence, which llama.cpp's sampler clamps to 0 (off).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

import numpy as np

from lcpp_zh.errors import EngineError
from lcpp_zh.runtime.sampling import SamplingParams


class LogitEdits:
    """Logit bias and repetition/frequency/presence penalties of one request."""

    def __init__(self, params: SamplingParams, n_vocab: int, prompt: Iterable[int] = ()) -> None:
        if any(token >= n_vocab for token in params.logit_bias):
            raise EngineError(f"logit_bias: token ids must lie in [0, {n_vocab})")
        self.bias_ids = np.fromiter(params.logit_bias.keys(), dtype=np.int64, count=len(params.logit_bias))
        self.bias = np.fromiter(params.logit_bias.values(), dtype=np.float32, count=len(params.logit_bias))
        self.penalize = params.repeat_last_n != 0 and (
            params.repeat_penalty != 1.0 or params.frequency_penalty != 0.0 or params.presence_penalty != 0.0)
        self.repeat = np.float32(params.repeat_penalty)
        self.frequency = np.float32(params.frequency_penalty)
        self.presence = np.float32(params.presence_penalty)
        self.window: collections.deque[int] = collections.deque(
            maxlen=None if params.repeat_last_n < 0 else params.repeat_last_n)
        self.counts: collections.Counter[int] = collections.Counter()
        # The penalty looks at the prompt too, as transformers' repetition_penalty does (the seed's demo).
        for token in prompt:
            self.accept(token)

    @property
    def active(self) -> bool:
        return bool(len(self.bias_ids)) or (self.penalize and bool(self.counts))

    def accept(self, token: int) -> None:
        """Record a token of the sequence (llama_sampler_accept's job for the penalties sampler)."""
        if not self.penalize:
            return
        if self.window.maxlen is not None and len(self.window) == self.window.maxlen:
            oldest = self.window[0]
            self.counts[oldest] -= 1
            if not self.counts[oldest]:
                del self.counts[oldest]
        self.window.append(token)
        self.counts[token] += 1

    def apply(self, logits: np.ndarray) -> None:
        """Edit one position's float32 logits (indexed by token id) in place."""
        if len(self.bias_ids):
            logits[self.bias_ids] += self.bias
        if not (self.penalize and self.counts):
            return
        ids = np.fromiter(self.counts.keys(), dtype=np.int64, count=len(self.counts))
        counts = np.fromiter(self.counts.values(), dtype=np.float32, count=len(self.counts))
        values = logits[ids]
        # llama.cpp: multiply a non-positive logit by the penalty, divide a positive one; then subtract
        # count * frequency + presence. Every operand is float32, as in C.
        values = np.where(values <= 0, values * self.repeat, values / self.repeat)
        values -= counts * self.frequency + np.float32(1.0) * self.presence
        logits[ids] = values
