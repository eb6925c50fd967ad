"""Generation speed of a GGUF model here, as llama-bench measures it: prompt processing (one batch of
`n_prompt` tokens) and generation (`n_gen` tokens decoded one at a time, greedy), after one warm-up decode.
Small on purpose (the advisor runs it once per quantization); llama-bench remains the reference tool.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lcpp_zh.errors import EngineError, ModelError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Speed:
    pp_tok_s: float  # prompt tokens per second
    tg_tok_s: float  # generated tokens per second
    n_prompt: int
    n_gen: int


def measure_speed(path: str | Path, prompt_tokens: list[int], *, n_gen: int = 64, n_threads: int | None = None,
                  gpu_layers: int = 0) -> Speed:
    """Time one prompt of `prompt_tokens` and `n_gen` greedy tokens after it."""
    import llama_cpp

    from lcpp_zh.common.system import physical_cores
    from lcpp_zh.runtime.llama_api import Batch, LlamaContext, LlamaModel

    if not prompt_tokens:
        raise ModelError("measuring speed needs a prompt of at least one token")
    n_prompt = len(prompt_tokens)
    model = LlamaModel(Path(path), gpu_layers=gpu_layers)
    try:
        ctx = LlamaContext(model, n_ctx=n_prompt + n_gen + 8, n_batch=max(n_prompt, 8), n_seq=1,
                           n_threads=n_threads or physical_cores())
        batch = Batch(max(n_prompt, 8))
        try:
            # llama-bench's warm-up: the first decode pays for allocations and page faults of the weights.
            _decode(ctx, batch, prompt_tokens[:1], 0)
            ctx.clear()
            started = time.perf_counter()
            last = _decode(ctx, batch, prompt_tokens, 0)
            pp_seconds = time.perf_counter() - started
            started = time.perf_counter()
            for i in range(n_gen):
                row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx.ctx, last), shape=(model.n_vocab,))
                last = _decode(ctx, batch, [int(row.argmax())], n_prompt + i)
            tg_seconds = time.perf_counter() - started
        finally:
            batch.close()
            ctx.close()
    finally:
        model.close()
    return Speed(n_prompt / pp_seconds, n_gen / tg_seconds if n_gen else 0.0, n_prompt, n_gen)


def _decode(ctx, batch, tokens: list[int], start: int) -> int:
    """Decode `tokens` at positions start.. with logits for the last; returns its batch index."""
    batch.clear()
    for k, token in enumerate(tokens):
        index = batch.add(token, start + k, 0, k == len(tokens) - 1)
    if ctx.decode(batch) != 0:
        raise EngineError("llama.cpp failed to decode while measuring speed (out of memory?)")
    return index
