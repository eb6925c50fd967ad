"""A base model's log-probabilities saved once for KL divergence: llama-perplexity's own `_logits_` file
(so `llama-perplexity --kl-divergence-base FILE --kl-divergence` reads ours and we read its), followed by a
small lcpp-zh trailer (JSON: model fingerprint, text hash, n_ctx, chunks, vocabulary) that lets a mismatched
reuse be refused. Only the file format and the checks live here; the computing is in lcpp_zh.eval.measure.perplexity.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from lcpp_zh.errors import ModelError
from lcpp_zh.eval.measure.scoring import PackedLogProbs

logger = logging.getLogger(__name__)

MAGIC = b"_logits_"  # perplexity.cpp's
TRAILER_MAGIC = b"LCPPZHBL"
TRAILER_VERSION = 1
_HEAD = struct.Struct("<8sIii")  # magic, n_ctx (uint32), n_vocab, n_chunk (int32), as perplexity.cpp writes them
_TAIL = struct.Struct("<Q8s")  # JSON length, TRAILER_MAGIC
# Keys llama.cpp's quantizer sets or drops: a quantization keeps its base's fingerprint without them.
_QUANT_KEYS = ("general.file_type", "general.quantization_version")
_QUANT_PREFIXES = ("quantize.", "split.")


def row_width(n_vocab: int) -> int:
    """uint16 values per row: scale and offset as two float32 (4 values), then the codes padded to even."""
    return 2 * ((n_vocab + 1) // 2) + 4


def model_fingerprint(path: str | Path) -> str:
    """A hash of a GGUF's metadata and tensor names and shapes, leaving out what quantizing changes (file
    type, tensor types, quantize.* keys): an F16 and every quantization made from it share it."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError) as exc:
        raise ModelError(f"{path}: corrupt or truncated GGUF ({exc})") from exc
    digest = hashlib.sha256()
    for name in sorted(reader.fields):
        if name in _QUANT_KEYS or name.startswith(_QUANT_PREFIXES) or name.startswith("GGUF."):
            continue
        field = reader.fields[name]
        digest.update(name.encode("utf-8"))
        for index in field.data:  # the value parts only; the header parts carry lengths and types
            digest.update(np.ascontiguousarray(field.parts[index]).tobytes())
    for tensor in sorted(reader.tensors, key=lambda t: t.name):
        digest.update(f"{tensor.name}:{tuple(int(x) for x in tensor.shape)}".encode())
    return digest.hexdigest()[:16]


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class BaseLogitsWriter:
    """Writes the file chunk by chunk, in order; `finish` appends the trailer."""

    def __init__(self, handle: BinaryIO, n_ctx: int, n_vocab: int, tokens: list[int], n_chunks: int) -> None:
        self.handle, self.n_vocab, self.width = handle, n_vocab, row_width(n_vocab)
        handle.write(_HEAD.pack(MAGIC, n_ctx, n_vocab, n_chunks))
        handle.write(np.asarray(tokens[: n_ctx * n_chunks], dtype="<i4").tobytes())

    def put(self, packed: PackedLogProbs) -> None:
        rows = np.zeros((len(packed.scale), self.width), dtype="<u2")
        rows[:, :4] = np.stack([packed.scale, packed.offset], axis=1).astype("<f4").view("<u2")
        rows[:, 4: 4 + self.n_vocab] = packed.codes
        self.handle.write(rows.tobytes())

    def finish(self, meta: dict[str, object]) -> None:
        blob = json.dumps({"version": TRAILER_VERSION, **meta}, ensure_ascii=False).encode("utf-8")
        self.handle.write(blob)
        self.handle.write(_TAIL.pack(len(blob), TRAILER_MAGIC))


@dataclass
class BaseLogits:
    """An opened file: its tokens, the packed rows (memory-mapped) and the trailer (None when the file was
    written by llama-perplexity, which has none)."""

    path: Path
    n_ctx: int
    n_vocab: int
    n_chunks: int
    tokens: list[int]
    rows: np.ndarray  # (n_chunks * n_scored, row_width) uint16, memory-mapped
    meta: dict[str, object] | None

    @property
    def n_scored(self) -> int:
        return self.n_ctx - 1 - self.n_ctx // 2

    def chunk(self, index: int) -> PackedLogProbs:
        rows = self.rows[index * self.n_scored: (index + 1) * self.n_scored]
        floats = np.ascontiguousarray(rows[:, :4]).view("<f4")
        return PackedLogProbs(floats[:, 0].astype(np.float32), floats[:, 1].astype(np.float32),
                              rows[:, 4: 4 + self.n_vocab])

    def check(self, *, n_ctx: int, n_vocab: int, fingerprint: str | None, model: str | Path,
              text: str | None = None) -> None:
        """Refuse, in one line each, a reuse these logits cannot serve."""
        name = self.path
        if n_ctx != self.n_ctx:
            raise ModelError(f"{name} was computed with --ctx {self.n_ctx}, not {n_ctx}: use --ctx {self.n_ctx} "
                             "or compute the base logits again")
        if n_vocab != self.n_vocab:
            raise ModelError(f"{model} has {n_vocab} tokens, the base logits in {name} {self.n_vocab}: "
                             "KL divergence needs the same vocabulary")
        if self.meta is None:
            return  # llama-perplexity's file: its own checks (context, vocabulary size) are all there is
        if fingerprint is not None and self.meta.get("fingerprint") != fingerprint:
            raise ModelError(f"{name} holds the logits of another model ({self.meta.get('model_name') or '?'}, "
                             f"fingerprint {self.meta.get('fingerprint')}; {Path(model).name} has {fingerprint}): "
                             "use it with quantizations of that model, or compare with --base BASE.gguf")
        if text is not None and self.meta.get("text_sha256") != text_digest(text):
            raise ModelError(f"{name} was computed on another text ({self.meta.get('text_label') or '?'}): "
                             "give the same --text/--lang, or compute the base logits again")


def open_base_logits(path: str | Path) -> BaseLogits:
    """Open a base-logits file written by lcpp-zh or by llama-perplexity --kl-divergence-base."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(_HEAD.size)
    except FileNotFoundError:
        raise ModelError(f"{path}: no such file") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot be read ({exc.strerror})") from None
    if len(head) < _HEAD.size or head[:8] != MAGIC:
        raise ModelError(f"{path}: not a base-logits file (make one with `lcpp-zh eval BASE.gguf "
                         "--save-base-logits FILE` or llama-perplexity --kl-divergence-base)")
    _, n_ctx, n_vocab, n_chunks = _HEAD.unpack(head)
    if n_ctx < 8 or n_vocab < 1 or n_chunks < 1:
        raise ModelError(f"{path}: not a base-logits file (n_ctx {n_ctx}, n_vocab {n_vocab}, chunks {n_chunks})")
    n_scored = n_ctx - 1 - n_ctx // 2
    tokens_at = _HEAD.size
    rows_at = tokens_at + 4 * n_ctx * n_chunks
    body = rows_at + 2 * n_scored * n_chunks * row_width(n_vocab)
    if size < body:
        raise ModelError(f"{path}: truncated ({size:,} bytes, {n_chunks} chunks of {n_ctx} tokens need {body:,})")
    meta = _read_trailer(path, body, size)
    tokens = np.fromfile(path, dtype="<i4", count=n_ctx * n_chunks, offset=tokens_at).tolist()
    rows = np.memmap(path, dtype="<u2", mode="r", offset=rows_at, shape=(n_scored * n_chunks, row_width(n_vocab)))
    return BaseLogits(path, n_ctx, n_vocab, n_chunks, tokens, rows, meta)


def _read_trailer(path: Path, body: int, size: int) -> dict[str, object] | None:
    if size < body + _TAIL.size:
        return None
    with open(path, "rb") as handle:
        handle.seek(size - _TAIL.size)
        length, magic = _TAIL.unpack(handle.read(_TAIL.size))
        if magic != TRAILER_MAGIC or body + length + _TAIL.size != size:
            return None
        handle.seek(body)
        try:
            return json.loads(handle.read(length).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ModelError(f"{path}: damaged lcpp-zh trailer; compute the base logits again") from None
