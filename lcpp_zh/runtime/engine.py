"""The one engine that owns llama.cpp: a model, one context with N sequence slots, and the thread that
runs continuous batching over them (lcpp_zh.runtime.scheduler).

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

from lcpp_zh.common.system import physical_cores
from lcpp_zh.errors import EngineError
from lcpp_zh.runtime.grammar import check_grammar
from lcpp_zh.runtime.lazy_grammar import LazyGrammarSampler, make_candidates
from lcpp_zh.runtime.llama_api import Batch, LlamaContext, LlamaModel, SpecialToken
from lcpp_zh.runtime.logit_edits import LogitEdits
from lcpp_zh.runtime.offload import OffloadPlan
from lcpp_zh.runtime.prompt_cache import PromptCache
from lcpp_zh.runtime.sampling import CandidateSampler, SamplingParams, build_chain
from lcpp_zh.runtime.scheduler import QueueFull, Scheduler
from lcpp_zh.runtime.settings import EngineSettings
from lcpp_zh.runtime.slots import Request, check_request
from lcpp_zh.runtime.speculative import DraftModel, Speculator
from lcpp_zh.runtime.stream import Event, Finished, Stream, TextDelta
from lcpp_zh.runtime.utf8_mask import Utf8Guard, Utf8Table

logger = logging.getLogger(__name__)

__all__ = ["Engine", "Stream", "TextDelta", "Finished", "Event", "QueueFull"]


@dataclass
class SlotSampler:
    """A request's sampler: logit edits and the UTF-8 mask in Python, then llama.cpp's chain (run over our own
    candidate array when there is a grammar, see CandidateSampler)."""

    chain: Any
    edits: LogitEdits
    utf8: Utf8Guard | None = None
    candidates: CandidateSampler | None = None


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

    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        self.ctx.seq_cp(src, dst, p0, p1)

    def state_save(self, seq_id: int) -> bytes:
        return self.ctx.state_save(seq_id)

    def state_load(self, seq_id: int, data: bytes) -> bool:
        return self.ctx.state_load(seq_id, data)

    # Tests turn this off to compare with llama.cpp's sampling alone.
    utf8_guard = True
    _utf8_table: Utf8Table | None = None

    def prepare(self) -> None:
        """Work done once at load, as llama-server warms up before it serves: the vocabulary's UTF-8 table
        (~0.1 s for 49k tokens) would otherwise land in the first answer's time to first token."""
        if self.utf8_guard and self._utf8_table is None:
            self._utf8_table = Utf8Table.from_vocab(self.model.n_vocab, self.model.piece, self.model.is_eog)

    def make_sampler(self, params: SamplingParams, prompt: list[int]) -> SlotSampler:
        edits = LogitEdits(params, self.model.n_vocab, prompt)
        utf8 = None
        if self.utf8_guard:
            self.prepare()  # a no-op after loading (tests may turn the guard off and on)
            utf8 = Utf8Guard(self._utf8_table)
        candidates = make_candidates(params, self.model.n_vocab, self.model.vocab, self.model.piece)
        return SlotSampler(build_chain(params, vocab=self.model.vocab), edits, utf8, candidates)

    def sample(self, sampler: SlotSampler, index: int) -> int:
        """The next token of one slot; EngineError (nothing accepted) when a grammar allows no token."""
        # Order of llama.cpp's common sampler: bias and penalties, then (ours) the UTF-8 mask, then the chain.
        if sampler.edits.active or sampler.utf8 is not None or sampler.candidates is not None:
            pointer = self._llama.llama_get_logits_ith(self.ctx.ctx, index)
            logits = np.ctypeslib.as_array(pointer, shape=(self.model.n_vocab,))
            if sampler.edits.active:
                sampler.edits.apply(logits)
            if sampler.utf8 is not None:
                sampler.utf8.apply(logits)
        if sampler.candidates is not None:
            token = sampler.candidates.sample(sampler.chain, logits)
        else:
            token = self._llama.llama_sampler_sample(sampler.chain, self.ctx.ctx, index)
        sampler.edits.accept(token)
        if sampler.utf8 is not None:
            sampler.utf8.accept(token)
        return token

    def free_sampler(self, sampler: SlotSampler) -> None:
        self._llama.llama_sampler_free(sampler.chain)
        if isinstance(sampler.candidates, LazyGrammarSampler):
            sampler.candidates.close()

    def is_eog(self, token: int) -> bool:
        return self.model.is_eog(token)

    def piece(self, token: int) -> bytes:
        return self.model.piece(token)


class VocabularyFront:
    """What needs only the model's vocabulary (`self._model`, a LlamaModel): tokenizing, pieces, control
    tokens, grammar checks. The in-process Engine and the server's RunnerClient (which holds a
    vocabulary-only model beside its runner process) share it, so the fronts see one interface.
    Add vocabulary-only methods here, not on Engine."""

    _model: LlamaModel

    def _describe_model(self) -> None:
        """The model facts the fronts read: GGUF metadata, chat template, special ids, sizes."""
        self.model_path = self._model.path
        self.metadata = self._model.metadata()
        self.chat_template = self._model.chat_template()
        self.bos_id, self.eos_id, self.eot_id = self._model.bos_id, self._model.eos_id, self._model.eot_id
        self.add_bos = self._model.add_bos
        self.n_vocab = self._model.n_vocab
        self.n_layer = self._model.n_layer

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

    def special_tokens(self) -> list[SpecialToken]:
        """The tokens llama.cpp matches as whole texts (control, user-defined, unknown), in its order;
        lcpp_zh.templates uses them to parse control tokens in a template's text but not in contents."""
        return self._model.special_tokens()

    def check_grammar(self, grammar: str) -> None:
        """Raise EngineError naming the problem when a GBNF grammar is beyond the limits that keep llama.cpp
        safe or does not parse for this vocabulary (lcpp_zh.runtime.grammar); compiles it once and frees it."""
        check_grammar(grammar, self._model.vocab)


def _load_model(model_path: str | os.PathLike, plan: OffloadPlan | None) -> LlamaModel:
    """The weights, placed as the offload plan says (None: on the CPU)."""
    if plan is None:
        return LlamaModel(model_path)
    from lcpp_zh.runtime.devices import resolve_devices

    return LlamaModel(model_path, gpu_layers=plan.n_gpu_layers, main_gpu=plan.main_gpu,
                      tensor_split=plan.tensor_split, devices=resolve_devices(plan.devices) or None)


def _ram_cache_mb(wanted: int) -> int:
    """--cache-ram, at most a quarter of the memory available now: a laptop keeps room for everything else."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1 << 20)
    except (ValueError, OSError, AttributeError):  # not on this platform
        return wanted
    return max(1, min(wanted, available // 4))


def _make_speculator(settings: EngineSettings, model: LlamaModel, n_ctx: int, n_threads: int,
                     plan: OffloadPlan | None) -> Speculator | None:
    """Speculative decoding as the settings ask, with the draft model on the GPU when the model is. None
    for recurrent and hybrid models: their cache cannot drop a sequence's last cells (rejected guesses)."""
    import llama_cpp

    spec = Speculator(settings)  # checks the settings before a draft model loads
    if not spec.enabled and not settings.draft_model:
        return None
    if llama_cpp.llama_model_is_recurrent(model.model) or llama_cpp.llama_model_is_hybrid(model.model):
        logger.info("speculative decoding is off: this model's cache cannot take back rejected guesses")
        return None
    if settings.draft_model:
        gpu_layers = 999 if plan is not None and plan.n_gpu_layers > 0 else 0
        spec.draft_model = DraftModel(settings.draft_model, model, n_ctx=n_ctx, n_seq=settings.n_parallel,
                                      n_batch=settings.n_batch, n_threads=n_threads, gpu_layers=gpu_layers)
    return spec


DEFAULT_SETTINGS = EngineSettings()  # frozen: one shared default is safe


class Engine(VocabularyFront):
    """A GGUF model served to any number of threads through N sequence slots."""

    def __init__(self, model_path: str | os.PathLike, settings: EngineSettings = DEFAULT_SETTINGS, *,
                 plan: OffloadPlan | None = None) -> None:
        """Load `model_path` with `settings`; `plan` places the layers on devices (gpu layers, main GPU,
        tensor split, devices); None runs on the CPU."""
        if settings.n_parallel < 1:
            raise EngineError("n_parallel must be at least 1")
        if settings.n_ctx < 16 * settings.n_parallel:
            raise EngineError(f"a context of {settings.n_ctx} tokens is too small for {settings.n_parallel} "
                              f"slot(s); use at least {16 * settings.n_parallel}")
        if settings.n_batch < settings.n_parallel:
            # Every generating slot puts one token in each batch: a batch smaller than the slots would
            # overflow llama.cpp's output buffer (GGML_ASSERT n_outputs_max, an abort).
            logger.warning("batch size %d raised to %d, one token per slot", settings.n_batch, settings.n_parallel)
            settings = settings.replace(n_batch=settings.n_parallel)
        self.settings = settings
        self.model_path = Path(model_path)
        self.n_threads = settings.n_threads or physical_cores()
        self.verbose = settings.verbose
        self._model = _load_model(model_path, plan)
        self._plan = plan
        try:
            self._init_context(settings)
        except BaseException:
            self._model.close()
            raise
        self._describe_model()
        self._embed_enabled = settings.embeddings
        self._embed_ctx: LlamaContext | None = None
        self._embed_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._scheduler.run, name="lcpp-zh-engine", daemon=True)
        self._thread.start()

    def _init_context(self, settings: EngineSettings) -> None:
        n_ctx, n_parallel, n_batch = settings.n_ctx, settings.n_parallel, settings.n_batch
        self._ctx = LlamaContext(self._model, n_ctx=n_ctx, n_batch=n_batch, n_seq=n_parallel,
                                 n_threads=self.n_threads, cache_type_k=settings.cache_type_k,
                                 cache_type_v=settings.cache_type_v, flash_attn=settings.flash_attn)
        self._loras = None
        if settings.loras:
            from lcpp_zh.runtime.lora import LoraSet

            self._loras = LoraSet(self._model.model, settings.loras)
            self._loras.apply(self._ctx.ctx)
        self.n_ctx = self._ctx.n_ctx
        self.n_parallel = n_parallel
        # The slots share one cache: a request may use all of it, up to the model's trained context.
        train = self._model.n_ctx_train
        self.n_ctx_slot = min(self.n_ctx, train) if train > 0 else self.n_ctx
        if train > 0 and n_ctx > train:
            logger.info("one request holds at most the model's training context, %d tokens", train)
        backend = _LlamaBackend(self._model, self._ctx)
        backend.prepare()  # part of loading, as llama-server's warm-up is: not of the first answer's latency
        cache = PromptCache(_ram_cache_mb(settings.cache_ram_mb)) if settings.cache_ram_mb > 0 else None
        try:
            self._speculator = _make_speculator(settings, self._model, self.n_ctx, self.n_threads, self._plan)
        except BaseException:
            if self._loras is not None:
                self._loras.free()
            self._ctx.close()
            raise
        self._scheduler = Scheduler(backend, n_slots=n_parallel, n_ctx=self.n_ctx,
                                    n_ctx_slot=self.n_ctx_slot, n_batch=self._ctx.n_batch,
                                    max_queue=settings.max_queue, prompt_cache=cache,
                                    speculator=self._speculator)

    # --- generation ---
    def submit(self, prompt_tokens: Sequence[int], params: SamplingParams | None = None, *,
               cache_key: str | None = None, stream: Stream | None = None) -> Stream:
        """Queue a generation; thread-safe. Raises EngineError when the prompt cannot fit a slot and
        QueueFull when too many requests wait. `stream` lets a caller (the runner) bring its own."""
        if self._closed:
            raise EngineError("the engine is closed")
        if not self._thread.is_alive():
            raise EngineError("the engine thread has stopped after a failure; restart the model")
        tokens = [int(t) for t in prompt_tokens]
        params = params or SamplingParams()
        check_request(tokens, params, n_ctx_slot=self.n_ctx_slot, n_vocab=self.n_vocab)
        stream = stream if stream is not None else Stream()
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

    @property
    def alive(self) -> bool:
        """False once the engine thread has died (every request since then fails at once)."""
        return not self._closed and self._thread.is_alive()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def n_batch(self) -> int:
        return self._scheduler.n_batch

    def call_after_each_step(self, callback: Any) -> None:
        """`callback()` runs on the engine thread after every step (the runner sends events then)."""
        self._scheduler.after_step = callback

    def wait_stopped(self) -> None:
        """Block until the engine thread ends (by close() or by a failure)."""
        self._thread.join()

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
        if self._speculator is not None:
            self._speculator.close()
        if self._loras is not None:
            self._loras.free()
        self._model.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
