"""Importance matrix of a GGUF model over a text, computed as llama.cpp's llama-imatrix computes it: llama.cpp's
eval callback (`cb_eval`) sees every matrix multiplication, and the squared activations entering each `blk.*`
weight are summed with their row counts. Chunking as llama-imatrix: the text tokenized once with BOS, chunks of
n_ctx tokens whose first token is BOS, n_batch / n_ctx chunks decoded side by side, every token an output.
The file format is lcpp_zh.convert.imatrix_file's; nothing here prints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lcpp_zh.convert.imatrix_file import Imatrix, read_imatrix
from lcpp_zh.errors import EngineError, ModelError
from lcpp_zh.eval.quantization import ggml_tensor as gt

if TYPE_CHECKING:  # llama_cpp loads in compute_imatrix: the CLI reads the defaults below without it
    from lcpp_zh.runtime.llama_api import Batch, LlamaContext, LlamaModel

logger = logging.getLogger(__name__)

__all__ = ["Imatrix", "compute_imatrix", "read_imatrix"]

# llama-imatrix's -b: tokens per decode, n_batch / n_ctx chunks side by side. It changes the matrix: with one KV
# stream per chunk llama.cpp cuts a decode into micro-batches holding an equal share of every chunk (split_equal),
# so -b decides which rows each attention sees at once, and attn_output's inputs move by up to 1e-3 relative
# between -b 128 and 2048 at ctx 128, in llama-imatrix as here (issue 18: its -b 128 against our 2048 then).
DEFAULT_BATCH = 2048
DEFAULT_UBATCH = 512  # its -ub: tokens per compute step, hence rows per callback
MIN_ROWS = 16  # llama-imatrix ignores multiplications of fewer rows (tiny batches)

# progress(chunks done, chunks in all)
Progress = Callable[[int, int], None]


class _Collector:
    """The eval callback and its sums: float32 accumulators per weight, (n_mat, n_cols), and row counts."""

    def __init__(self, process_output: bool = False) -> None:
        import llama_cpp

        self.lib = gt.ggml_base()
        self.process_output = process_output
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}
        self.error: str | None = None
        self.scratch: dict[str, np.ndarray] = {}
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_node)

    def _on_node(self, address: int, ask: bool, _user_data: int) -> bool:
        # An exception must not cross into C: it is kept and raised after llama_decode returns.
        try:
            tensor = gt.tensor_at(address)
            if ask:  # the scheduler asks first; a yes splits its graph there, so answer yes sparingly
                return self._wanted(tensor)
            if self.error is None:
                self._collect(address, tensor)
        except Exception as exc:  # noqa: BLE001 - anything here would otherwise vanish inside ctypes
            self.error = self.error or f"reading activations failed: {exc!r}"
        return True

    def _wanted(self, tensor: gt.GgmlTensor) -> bool:
        if tensor.op == gt.GGML_OP_MUL_MAT_ID:
            return True
        if tensor.op != gt.GGML_OP_MUL_MAT:
            return False
        src1 = gt.tensor_at(tensor.src[1])
        if src1.ne[1] < MIN_ROWS or src1.type != gt.GGML_TYPE_F32:
            return False
        name = gt.weight_name(gt.tensor_at(tensor.src[0]))
        return name.startswith("blk.") or (self.process_output and name == "output.weight")

    def _entry(self, name: str, n_mat: int, n_cols: int, n_counts: int) -> tuple[np.ndarray, np.ndarray]:
        sums = self.sums.get(name)
        if sums is None:
            sums = self.sums[name] = np.zeros((n_mat, n_cols), np.float32)
            self.counts[name] = np.zeros(n_counts, np.int64)
        elif sums.shape != (n_mat, n_cols):
            raise EngineError(f"{name}: activations of {n_mat}x{n_cols}, earlier {sums.shape[0]}x{sums.shape[1]}")
        return sums, self.counts[name]

    def _collect(self, address: int, tensor: gt.GgmlTensor) -> None:
        src0, src1 = gt.tensor_at(tensor.src[0]), gt.tensor_at(tensor.src[1])
        name = gt.weight_name(src0)
        x = gt.tensor_array(self.lib, tensor.src[1], src1, np.float32, self.scratch)  # (ne3, ne2, ne1, ne0)
        n_cols = src1.ne[0]
        if tensor.op == gt.GGML_OP_MUL_MAT_ID:
            self._collect_experts(tensor, name, src0.ne[2], x)
            return
        n_mat = src0.ne[2] * src0.ne[3]
        sums, counts = self._entry(name, n_mat, n_cols, 1)
        if n_mat == 1:
            _add_squares(sums[0], x.reshape(-1, n_cols))
        else:  # a 3D+ weight: activations follow its matrices, broadcast as ggml_mul_mat does
            for i3 in range(x.shape[0]):
                for i2 in range(x.shape[1]):
                    _add_squares(sums[(i3 % src0.ne[3]) * src0.ne[2] + i2 % src0.ne[2]], x[i3, i2])
        counts += gt.n_rows(src1) // n_mat
        if not np.isfinite(sums).all():
            self.error = f"non-finite activations entering {name} (a broken model or text?)"

    def _collect_experts(self, tensor: gt.GgmlTensor, name: str, n_experts: int, x: np.ndarray) -> None:
        """MUL_MAT_ID: src1 (n_tokens, n_used or 1, n_cols); src[2] holds each token's experts (n_tokens, n_used)."""
        ids_t = gt.tensor_at(tensor.src[2])
        ids = gt.tensor_array(self.lib, tensor.src[2], ids_t, np.int32, self.scratch, "ids")[0, 0]
        n_tokens, n_used = ids.shape
        # (n_used, n_tokens, n_cols): llama-imatrix's loop order (slot, then token), which np.add.at keeps, so
        # that each expert's float32 sum adds its rows in the same order
        experts = ids.T.reshape(-1).astype(np.int64)
        if experts.size and (experts.min() < 0 or experts.max() >= n_experts):
            raise EngineError(f"{name}: expert id out of range")
        rows = x[0][:, np.arange(n_used) % x.shape[2], :].transpose(1, 0, 2).reshape(-1, x.shape[3])
        sums, counts = self._entry(name, n_experts, x.shape[3], n_experts)
        np.add.at(sums, experts, np.square(rows))
        counts += np.bincount(experts, minlength=n_experts)
        if not np.isfinite(sums[np.unique(experts)]).all():
            self.error = f"non-finite activations entering {name} (a broken model or text?)"

    def result(self, chunk_size: int) -> Imatrix:
        sums = {k: v.copy() for k, v in self.sums.items()}
        # llama-imatrix's chunk count: the most rows any weight saw, in chunks
        chunks = max((int(c.max()) for c in self.counts.values()), default=0) // chunk_size
        return Imatrix(sums, {k: v.copy() for k, v in self.counts.items()}, [], chunks, chunk_size)


def _add_squares(acc: np.ndarray, rows: np.ndarray) -> None:
    """acc (n_cols,) += the squares of rows (n_rows, n_cols), in float32 and one row after another: llama-imatrix's
    own loop (`acc[j] += x[j]*x[j]` into a float vector), so that the sums agree with its file to the bit rather
    than to float32 rounding (a float64 or pairwise sum differs from it by ~1e-6 relative). numpy reduces the
    outer axis of a C-ordered array row by row (pairwise summation is for the inner one), as fast as einsum
    within 2x where cumsum is 12x slower; tests/eval/test_imatrix.py holds it to llama-imatrix's bits."""
    squares = np.square(rows)
    squares[0] += acc
    np.add.reduce(squares, axis=0, out=acc)


def compute_imatrix(model_path: str | Path, text: str, *, n_ctx: int = 512, n_chunks: int | None = None,
                    n_threads: int | None = None, progress: Progress | None = None, n_batch: int = DEFAULT_BATCH,
                    n_ubatch: int = DEFAULT_UBATCH, gpu_layers: int = 0, process_output: bool = False) -> Imatrix:
    """The importance matrix of `model_path` over `text` (llama-imatrix -c n_ctx --chunks n_chunks)."""
    from lcpp_zh.common.system import physical_cores
    from lcpp_zh.runtime.llama_api import Batch, LlamaContext, LlamaModel

    if n_ctx < MIN_ROWS:
        raise EngineError(f"a context of {n_ctx} tokens is too small for an importance matrix (at least {MIN_ROWS})")
    if n_batch >= n_ctx and n_batch % n_ctx:
        raise EngineError(f"the batch {n_batch} must be a multiple of the context {n_ctx} (or smaller than it)")
    n_seq = max(1, n_batch // n_ctx)
    n_batch = min(n_batch, n_seq * n_ctx)
    collector = _Collector(process_output)
    model = LlamaModel(model_path, gpu_layers=gpu_layers)
    ctx = batch = None
    try:
        tokens = model.tokenize(text, add_bos=model.add_bos, special=False)
        if len(tokens) < 2 * n_ctx:
            raise ModelError(f"the text is {len(tokens)} tokens long; a context of {n_ctx} needs at least "
                             f"{2 * n_ctx} (a longer text or a smaller --ctx)")
        total = len(tokens) // n_ctx if n_chunks is None else min(n_chunks, len(tokens) // n_ctx)
        # llama-imatrix's context: its -ub apart from -b (it shapes the multiplications the callback sees), one
        # KV stream per chunk, and the eval callback.
        ctx = LlamaContext(model, n_ctx=n_seq * n_ctx, n_batch=n_batch, n_ubatch=n_ubatch, n_seq=n_seq,
                           kv_unified=False, n_threads=n_threads or physical_cores(), cb_eval=collector.callback)
        batch = Batch(n_batch)
        logger.info("imatrix: %d chunks of %d tokens, %d side by side", total, n_ctx, n_seq)
        for first in range(0, total, n_seq):
            _decode_group(ctx, batch, tokens, first, min(n_seq, total - first), n_ctx, n_batch, model)
            if collector.error:
                raise EngineError(collector.error)
            if progress:
                progress(min(first + n_seq, total), total)
    finally:
        if batch is not None:
            batch.close()
        if ctx is not None:
            ctx.close()
        model.close()
    if not collector.sums:
        raise EngineError(f"{model_path}: no matrix multiplication of a blk.* weight was seen (not a transformer?)")
    return collector.result(n_ctx)


def _decode_group(ctx: LlamaContext, batch: Batch, tokens: list[int], first: int, group: int, n_ctx: int,
                  n_batch: int, model: LlamaModel) -> None:
    """Chunks first .. first+group-1, one sequence each, in decodes of n_batch tokens; every token is an
    output so that the last layer sees all rows, as in llama-imatrix."""
    ctx.clear()
    for j in range(0, n_ctx, n_batch):
        batch.clear()
        size = min(n_ctx - j, n_batch)
        for seq in range(group):
            start = (first + seq) * n_ctx + j
            for k in range(size):
                token = model.bos_id if j + k == 0 and model.add_bos else tokens[start + k]
                batch.add(token, j + k, seq, True)
        if ctx.decode(batch) != 0:
            raise EngineError("llama.cpp failed to decode a chunk (out of memory? try a smaller --ctx)")
