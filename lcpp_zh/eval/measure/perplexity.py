"""Perplexity of a GGUF model over a text, and with a base model the KL-divergence statistics, as llama.cpp's
llama-perplexity computes them: the text tokenized once (with BOS), cut into chunks of n_ctx tokens, each
chunk's first token replaced by BOS, only the second half of each chunk scored, n_batch / n_ctx chunks
decoded side by side. The base model's log-probabilities go to a file, 16 bits each, as llama-perplexity
keeps them (lcpp_zh.eval.measure.base_logits): saved once and reused, or temporary. Scoring formulas are in
lcpp_zh.eval.measure.scoring; nothing here prints.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lcpp_zh.common.atomic import atomic_path, check_writable
from lcpp_zh.errors import EngineError, ModelError
from lcpp_zh.eval.measure.base_logits import (
    BaseLogits,
    BaseLogitsWriter,
    model_fingerprint,
    open_base_logits,
    row_width,
    text_digest,
)
from lcpp_zh.eval.measure.scoring import KldSums, kld_statistics, pack_log_probs, token_nll
from lcpp_zh.runtime.llama_api import Batch, LlamaContext, LlamaModel

logger = logging.getLogger(__name__)

# progress(stage, chunks done, chunks in all): stage is "model", or "base" then "model" with a base.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class EvalSettings:
    n_ctx: int = 512  # tokens per chunk (llama-perplexity's -c)
    n_batch: int = 2048  # tokens per decode; n_batch // n_ctx chunks side by side (its -b)
    n_ubatch: int = 512  # tokens per llama.cpp compute step (its -ub)
    n_chunks: int | None = None  # at most this many chunks (its --chunks)
    n_threads: int | None = None
    gpu_layers: int = 0
    rpc: str | None = None  # llama.cpp RPC workers, HOST:PORT[,HOST:PORT]


@dataclass
class EvalResult:
    """What `lcpp-zh eval` reports; `kld` holds the statistics of a run against a base model."""

    model: str
    n_ctx: int
    chunks: int
    tokens_scored: int
    ppl: float
    ppl_error: float
    seconds: float
    base: str | None = None
    kld: dict[str, object] | None = None
    chunk_ppl: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        out = {k: v for k, v in self.__dict__.items() if k != "chunk_ppl"}
        out["tokens_per_s"] = self.tokens_evaluated / self.seconds if self.seconds else 0.0
        return out

    @property
    def tokens_evaluated(self) -> int:
        return self.chunks * self.n_ctx * (2 if self.base else 1)


class _ChunkRunner:
    """One model and a context of n_seq chunks; yields each chunk's logits at the scored positions."""

    def __init__(self, path: Path, settings: EvalSettings) -> None:
        from lcpp_zh.common.system import physical_cores

        n_ctx = settings.n_ctx
        self.n_ctx = n_ctx
        self.n_seq = max(1, settings.n_batch // n_ctx)
        if settings.n_batch >= n_ctx and settings.n_batch % n_ctx:
            raise EngineError(f"--batch {settings.n_batch} must be a multiple of --ctx {n_ctx} (or smaller than it)")
        self.n_batch = min(settings.n_batch, self.n_seq * n_ctx)
        self.first = n_ctx // 2
        self.model = LlamaModel(path, gpu_layers=settings.gpu_layers, rpc=settings.rpc)
        try:
            # llama-perplexity's context: its -ub apart from -b (how llama.cpp cuts a batch into micro-batches
            # moves a quantized model's mean KLD by some 10 %: SmolLM2 Q4_1 against F16, ctx 128, ub 2048 vs
            # 512) and one KV stream per chunk.
            self.ctx = LlamaContext(self.model, n_ctx=self.n_seq * n_ctx, n_batch=self.n_batch,
                                    n_ubatch=settings.n_ubatch, n_seq=self.n_seq, kv_unified=False,
                                    n_threads=settings.n_threads or physical_cores())
        except Exception:
            self.model.close()
            raise
        self.batch = Batch(self.n_batch)
        self.n_vocab = self.model.n_vocab

    def tokenize(self, text: str) -> list[int]:
        # llama-perplexity's common_tokenize(ctx, text, add_special=true): BOS as the vocabulary says, and
        # special-token texts in the file stay text.
        return self.model.tokenize(text, add_bos=self.model.add_bos, special=False)

    def chunks(self, tokens: list[int], n_chunks: int) -> Iterator[tuple[int, np.ndarray]]:
        """(chunk index, logits (n_ctx - 1 - first, n_vocab) float32 predicting tokens first+1 .. n_ctx-1)."""
        import llama_cpp

        n_ctx, first, n_scored = self.n_ctx, self.first, self.n_ctx - 1 - self.first
        n_rows = n_ctx - first
        for i in range(0, n_chunks, self.n_seq):
            group = min(self.n_seq, n_chunks - i)
            self.ctx.clear()
            outputs: list[np.ndarray] = []
            for j in range(0, n_ctx, self.n_batch):
                self.batch.clear()
                size = min(n_ctx - j, self.n_batch)
                n_out = 0
                for seq in range(group):
                    start = (i + seq) * n_ctx
                    for k in range(size):
                        pos = j + k
                        token = self.model.bos_id if pos == 0 and self.model.add_bos else tokens[start + pos]
                        self.batch.add(token, pos, seq, pos >= first)
                        n_out += pos >= first
                if self.ctx.decode(self.batch) != 0:
                    raise EngineError("llama.cpp failed to decode a chunk (out of memory? try a smaller --batch)")
                if n_out:
                    pointer = llama_cpp.llama_get_logits(self.ctx.ctx)
                    rows = np.ctypeslib.as_array(pointer, shape=(n_out, self.n_vocab))
                    # A view into llama.cpp's buffer is enough when the group took one decode: it is read
                    # before the next one. A chunk spread over several decodes (n_batch < n_ctx) is copied.
                    outputs.append(rows if j + self.n_batch >= n_ctx else rows.copy())
            # Each sequence's rows follow the previous one's; one sequence over several batches concatenates.
            logits = np.concatenate(outputs) if len(outputs) > 1 else outputs[0]
            for seq in range(group):
                yield i + seq, logits[seq * n_rows: seq * n_rows + n_scored]

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()
        self.model.close()


def _n_chunks(n_tokens: int, settings: EvalSettings) -> int:
    available = n_tokens // settings.n_ctx
    if n_tokens < 2 * settings.n_ctx:
        raise ModelError(f"the text is {n_tokens} tokens long; a context of {settings.n_ctx} needs at least "
                         f"{2 * settings.n_ctx} (a longer --text or a smaller --ctx)")
    return available if settings.n_chunks is None else min(settings.n_chunks, available)


def _targets(tokens: list[int], chunk: int, n_ctx: int) -> np.ndarray:
    first = n_ctx // 2
    start = chunk * n_ctx
    return np.asarray(tokens[start + first + 1: start + n_ctx], dtype=np.int64)


def perplexity(path: str | Path, text: str, settings: EvalSettings = EvalSettings(),
               progress: Progress | None = None) -> EvalResult:
    """The perplexity of `path` over `text` (llama-perplexity's default run)."""
    started = time.monotonic()
    runner = _ChunkRunner(Path(path), settings)
    try:
        tokens = runner.tokenize(text)
        n_chunks = _n_chunks(len(tokens), settings)
        nll = nll2 = 0.0
        count = 0
        chunk_ppl = []
        for chunk, logits in runner.chunks(tokens, n_chunks):
            values = token_nll(logits, _targets(tokens, chunk, settings.n_ctx))
            nll += float(values.sum())
            nll2 += float((values * values).sum())
            count += len(values)
            chunk_ppl.append(math.exp(nll / count))
            if progress:
                progress("model", chunk + 1, n_chunks)
    finally:
        runner.close()
    mean, mean2 = nll / count, nll2 / count
    ppl = math.exp(mean)
    var = mean2 - mean * mean
    error = math.sqrt(var / (count - 1)) * ppl if var > 0 else 0.0
    return EvalResult(str(path), settings.n_ctx, n_chunks, count, ppl, error, time.monotonic() - started,
                      chunk_ppl=chunk_ppl)


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"GGUF"
    except OSError:
        return False


def save_base_logits(base_path: str | Path, text: str, destination: str | Path,
                     settings: EvalSettings = EvalSettings(), progress: Progress | None = None,
                     text_label: str | None = None) -> EvalResult:
    """Compute the base model's packed log-probabilities over `text` into `destination` (llama-perplexity
    --kl-divergence-base's file, with lcpp-zh's trailer); returns the base's perplexity."""
    started = time.monotonic()
    base_path, destination = Path(base_path), Path(destination)
    check_writable(destination)
    fingerprint = model_fingerprint(base_path)
    n_scored = settings.n_ctx - 1 - settings.n_ctx // 2
    runner = _ChunkRunner(base_path, settings)
    try:
        tokens = runner.tokenize(text)
        n_chunks = _n_chunks(len(tokens), settings)
        _check_free_space(destination.parent, n_chunks * n_scored * row_width(runner.n_vocab) * 2)
        nll = nll2 = 0.0
        with atomic_path(destination) as temporary, open(temporary, "wb") as handle:
            writer = BaseLogitsWriter(handle, settings.n_ctx, runner.n_vocab, tokens, n_chunks)
            for chunk, logits in runner.chunks(tokens, n_chunks):
                packed, values = pack_log_probs(logits, _targets(tokens, chunk, settings.n_ctx))
                writer.put(packed)
                values64 = values.astype(np.float64)
                nll += float(values64.sum())
                nll2 += float((values64 * values64).sum())
                if progress:
                    progress("base", chunk + 1, n_chunks)
            name = runner.model.metadata().get("general.name")
            writer.finish({"fingerprint": fingerprint, "model": str(base_path), "model_name": name,
                           "text_sha256": text_digest(text), "text_label": text_label, "n_ctx": settings.n_ctx,
                           "chunks": n_chunks, "n_vocab": runner.n_vocab, "tokens": len(tokens)})
    finally:
        runner.close()
    count = n_chunks * n_scored
    mean = nll / count
    var = nll2 / count - mean * mean
    ppl = math.exp(mean)
    error = math.sqrt(var / (count - 1)) * ppl if var > 0 and count > 1 else 0.0
    return EvalResult(str(base_path), settings.n_ctx, n_chunks, count, ppl, error, time.monotonic() - started)


def _check_free_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if needed + (64 << 20) > free:
        raise EngineError(f"{folder}: {needed / 2**30:.2f} GiB needed for the base model's log-probabilities, "
                          f"{free / 2**30:.2f} GiB free (fewer --chunks, or TMPDIR elsewhere)")


def kl_divergence(path: str | Path, base: str | Path, text: str | None, settings: EvalSettings = EvalSettings(),
                  progress: Progress | None = None) -> EvalResult:
    """Perplexity of `path` and its KL divergence from `base` over `text`, on the base model's tokens
    (llama-perplexity --kl-divergence). `base` is the base GGUF, computed here into a temporary file first,
    or a file of save_base_logits (or of llama-perplexity --kl-divergence-base); `text`, which such a file
    does not need, is checked against the one it was computed on when given."""
    base = Path(base)
    if _is_gguf(base):
        if text is None:
            raise ModelError(f"{base}: a base model needs the text to evaluate on")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="lcpp-zh-kld-") as folder:
            saved = Path(folder) / "base.logits"
            save_base_logits(base, text, saved, settings, progress)
            result = _kl_from_file(Path(path), open_base_logits(saved), None, settings, progress, check=False)
        result.base, result.seconds = str(base), time.monotonic() - started
        return result
    return _kl_from_file(Path(path), open_base_logits(base), text, settings, progress, check=True)


def _kl_from_file(path: Path, saved: BaseLogits, text: str | None, settings: EvalSettings,
                  progress: Progress | None, *, check: bool) -> EvalResult:
    started = time.monotonic()
    n_chunks = saved.n_chunks
    if settings.n_chunks is not None:
        if settings.n_chunks > saved.n_chunks:
            raise ModelError(f"{saved.path} holds {saved.n_chunks} chunks, not {settings.n_chunks}: use --chunks "
                             f"{saved.n_chunks} or fewer, or compute the base logits again")
        n_chunks = settings.n_chunks
    fingerprint = model_fingerprint(path) if check and saved.meta is not None else None
    runner = _ChunkRunner(path, settings)
    try:
        if check:
            saved.check(n_ctx=settings.n_ctx, n_vocab=runner.n_vocab, fingerprint=fingerprint, model=path, text=text)
        elif runner.n_vocab != saved.n_vocab:
            raise ModelError(f"{path} has {runner.n_vocab} tokens, the base model {saved.n_vocab}: "
                             "KL divergence needs the same vocabulary")
        tokens = saved.tokens
        sums = KldSums()
        for chunk, logits in runner.chunks(tokens, n_chunks):
            sums.add(logits, _targets(tokens, chunk, settings.n_ctx), saved.chunk(chunk))
            if progress:
                progress("model", chunk + 1, n_chunks)
    finally:
        runner.close()
    stats = kld_statistics(sums)
    return EvalResult(str(path), settings.n_ctx, n_chunks, sums.count, float(stats["ppl"]), float(stats["ppl_error"]),
                      time.monotonic() - started, base=str(saved.path), kld=stats)
