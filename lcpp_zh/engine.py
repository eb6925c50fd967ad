"""The one engine that owns llama.cpp: a model, one context with N sequence slots, and the thread that
runs continuous batching over them (lcpp_zh.scheduler).

chat, generate and serve are thin fronts: they tokenize through the engine, `submit` prompt tokens and
read a Stream of TextDelta/Finished events. Nothing here knows about templates, HTTP or terminals.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lcpp_zh.errors import EngineError
from lcpp_zh.llama_api import Batch, LlamaContext, LlamaModel
from lcpp_zh.logit_edits import LogitEdits
from lcpp_zh.sampling import SamplingParams, build_chain
from lcpp_zh.scheduler import QueueFull, Scheduler
from lcpp_zh.slots import Request
from lcpp_zh.stream import Event, Finished, Stream, TextDelta

logger = logging.getLogger(__name__)

__all__ = ["Engine", "Stream", "TextDelta", "Finished", "Event", "QueueFull", "physical_cores"]


def physical_cores() -> int:
    """Physical cores this process may run on (llama-cpp-python's default, half the logical CPUs, is too
    low on machines without SMT). Read from sysfs; falls back to the logical count."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        base = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((base.joinpath("physical_package_id").read_text().strip(),
                       base.joinpath("core_id").read_text().strip()))
        except OSError:
            return len(cpus) or 1
    return max(1, len(cores))


@dataclass
class SlotSampler:
    """A request's sampler: logit edits in Python, then llama.cpp's chain."""

    chain: Any
    edits: LogitEdits


class _LlamaBackend:
    """The scheduler's view of llama.cpp: decode, KV trimming and sampling on one context."""

    def __init__(self, model: LlamaModel, ctx: LlamaContext) -> None:
        import llama_cpp

        self._llama = llama_cpp
        self.model = model
        self.ctx = ctx

    def new_batch(self, capacity: int) -> Batch:
        return Batch(capacity)

    def decode(self, batch: Batch) -> int:
        return self.ctx.decode(batch)

    def seq_rm(self, seq_id: int, p0: int, p1: int = -1) -> bool:
        return self.ctx.seq_rm(seq_id, p0, p1)

    def make_sampler(self, params: SamplingParams, prompt: list[int]) -> SlotSampler:
        edits = LogitEdits(params, self.model.n_vocab, prompt)
        return SlotSampler(build_chain(params, vocab=self.model.vocab), edits)

    def sample(self, sampler: SlotSampler, index: int) -> int:
        if sampler.edits.active:
            logits = self._llama.llama_get_logits_ith(self.ctx.ctx, index)
            sampler.edits.apply(np.ctypeslib.as_array(logits, shape=(self.model.n_vocab,)))
        token = self._llama.llama_sampler_sample(sampler.chain, self.ctx.ctx, index)
        sampler.edits.accept(token)
        return token

    def free_sampler(self, sampler: SlotSampler) -> None:
        self._llama.llama_sampler_free(sampler.chain)

    def is_eog(self, token: int) -> bool:
        return self.model.is_eog(token)

    def piece(self, token: int) -> bytes:
        return self.model.piece(token)


class Engine:
    """A GGUF model served to any number of threads through N sequence slots."""

    def __init__(self, model_path: str | os.PathLike, *, n_ctx: int = 4096, n_parallel: int = 4,
                 n_threads: int | None = None, n_batch: int = 512, gpu_layers: int = 0, main_gpu: int = 0,
                 tensor_split: Sequence[float] | None = None,
                 loras: Sequence[str | os.PathLike | tuple[str | os.PathLike, float]] = (),
                 embeddings: bool = False, verbose: bool = False, max_queue: int = 64) -> None:
        if n_parallel < 1:
            raise EngineError("n_parallel must be at least 1")
        if n_ctx < 16 * n_parallel:
            raise EngineError(f"a context of {n_ctx} tokens is too small for {n_parallel} slot(s); "
                              f"use at least {16 * n_parallel}")
        self.model_path = Path(model_path)
        self.n_threads = n_threads or physical_cores()
        self.verbose = verbose
        self._model = LlamaModel(model_path, gpu_layers=gpu_layers, main_gpu=main_gpu, tensor_split=tensor_split)
        try:
            self._init_context(n_ctx, n_parallel, n_batch, loras, max_queue)
        except BaseException:
            self._model.close()
            raise
        self.metadata = self._model.metadata()
        self.chat_template = self._model.chat_template()
        self.bos_id, self.eos_id, self.eot_id = self._model.bos_id, self._model.eos_id, self._model.eot_id
        self.add_bos = self._model.add_bos
        self.n_vocab = self._model.n_vocab
        self.n_layer = self._model.n_layer
        self._embed_enabled = embeddings
        self._embed_ctx: LlamaContext | None = None
        self._embed_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._scheduler.run, name="lcpp-zh-engine", daemon=True)
        self._thread.start()

    def _init_context(self, n_ctx: int, n_parallel: int, n_batch: int, loras: Sequence[Any], max_queue: int) -> None:
        if n_ctx > self._model.n_ctx_train * n_parallel:
            logger.warning("context %d per slot is beyond the model's training context %d",
                           n_ctx // n_parallel, self._model.n_ctx_train)
        self._ctx = LlamaContext(self._model, n_ctx=n_ctx, n_batch=n_batch, n_seq=n_parallel,
                                 n_threads=self.n_threads)
        self._loras = None
        if loras:
            from lcpp_zh.lora_runtime import LoraSet

            self._loras = LoraSet(self._model.model, loras)
            self._loras.apply(self._ctx.ctx)
        self.n_ctx = self._ctx.n_ctx
        self.n_parallel = n_parallel
        self.n_ctx_slot = self.n_ctx // n_parallel
        self._scheduler = Scheduler(_LlamaBackend(self._model, self._ctx), n_slots=n_parallel,
                                    n_ctx_slot=self.n_ctx_slot, n_batch=n_batch, max_queue=max_queue)

    # --- tokens ---
    def tokenize(self, text: str, *, add_bos: bool, special: bool = True) -> list[int]:
        """Token ids; with special=True `<s>`/`</s>` texts are the control tokens. Never a doubled BOS."""
        return self._model.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        data = b"".join(self._model.piece(int(t), special=special) for t in tokens)
        return data.decode("utf-8", errors="replace")

    def token_text(self, token: int) -> str:
        """The text of a token as written in templates (`<s>`, `<|im_end|>`)."""
        return self._model.token_text(token)

    def piece(self, token: int) -> bytes:
        return self._model.piece(token)

    # --- generation ---
    def submit(self, prompt_tokens: Sequence[int], params: SamplingParams | None = None, *,
               cache_key: str | None = None) -> Stream:
        """Queue a generation; thread-safe. Raises EngineError when the prompt cannot fit a slot and
        QueueFull when too many requests wait."""
        if self._closed:
            raise EngineError("the engine is closed")
        tokens = [int(t) for t in prompt_tokens]
        if any(t < 0 or t >= self.n_vocab for t in tokens):
            raise EngineError(f"prompt token ids must lie in [0, {self.n_vocab})")
        params = params or SamplingParams()
        outside = [t for t in params.logit_bias if t >= self.n_vocab]
        if outside:
            raise EngineError(f"logit_bias: token {outside[0]} is not in the vocabulary (ids 0 to {self.n_vocab - 1})")
        stream = Stream()
        self._scheduler.submit(Request(tokens, params, stream, cache_key))
        return stream

    def generate(self, prompt_tokens: Sequence[int], params: SamplingParams | None = None) -> tuple[str, Finished]:
        """Convenience: submit and wait for the whole text."""
        return self.submit(prompt_tokens, params).text()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Mean-pooled embeddings, computed on a separate context (created on first use)."""
        if not self._embed_enabled:
            raise EngineError("this engine was created without embeddings=True")
        with self._embed_lock:
            if self._embed_ctx is None:
                self._embed_ctx = LlamaContext(self._model, n_ctx=self.n_ctx_slot, n_batch=self.n_ctx_slot,
                                               n_seq=1, n_threads=self.n_threads, embeddings=True)
            return [self._embed_one(self._embed_ctx, text) for text in texts]

    def _embed_one(self, ctx: LlamaContext, text: str) -> list[float]:
        tokens = self.tokenize(text, add_bos=self.add_bos, special=False)[: ctx.n_ctx]
        if not tokens:
            raise EngineError("cannot embed an empty text")
        ctx.clear()
        batch = Batch(len(tokens))
        try:
            for i, token in enumerate(tokens):
                batch.add(token, i, 0, True)
            if ctx.decode(batch) != 0:
                raise EngineError("llama_decode failed while embedding")
            return ctx.embeddings_seq(0)
        finally:
            batch.close()

    # --- LoRA adapters ---
    def lora_adapters(self) -> list[dict[str, Any]]:
        """The loaded adapters: id, name, path, scale, alpha."""
        return self._loras.describe() if self._loras else []

    def set_lora_scales(self, entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Change adapter scales between two decoding steps (llama-server's POST /lora-adapters shape:
        unlisted adapters get 0). Cached prefixes were computed with the old scales, so they are dropped."""
        if not self._loras:
            raise EngineError("no LoRA adapters are loaded (start with --lora ADAPTER.gguf)")

        def change() -> None:
            self._loras.set_scales(entries)
            self._loras.apply(self._ctx.ctx)

        self._scheduler.between_steps(change)
        return self.lora_adapters()

    def stats(self) -> dict[str, int]:
        return self._scheduler.stats()

    def close(self) -> None:
        """Stop the engine thread (open streams end with an error event) and free llama.cpp's memory."""
        if self._closed:
            return
        self._closed = True
        self._scheduler.close()
        self._thread.join()
        self._scheduler.batch.close()
        if self._embed_ctx is not None:
            self._embed_ctx.close()
        self._ctx.close()
        if self._loras is not None:
            self._loras.free()
        self._model.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
