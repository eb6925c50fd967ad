"""Importance matrices on disk: llama.cpp's GGUF imatrix format (llama-imatrix's output) and its legacy .dat.

Reads and writes with the `gguf` package; knows nothing of llama contexts (lcpp_zh.eval.quantization.imatrix computes
matrices). Each entry is a weight tensor's summed squared input activations (`<name>.in_sum2`, one row per
expert) and how many activation rows were summed (`<name>.counts`), as common/imatrix-loader.cpp reads them.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lcpp_zh.common.atomic import atomic_path
from lcpp_zh.errors import ConversionError

logger = logging.getLogger(__name__)

SUMS_SUFFIX = ".in_sum2"
COUNTS_SUFFIX = ".counts"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"


@dataclass
class Imatrix:
    """Per weight tensor: `sums` (n_mat, n_cols) float32 and `counts` (n_mat,) int64, as llama-imatrix keeps
    them. A legacy .dat file holds means scaled by its call count instead (`legacy`: sums / counts is still
    the mean squared activation llama-quantize hands to llama.cpp)."""

    sums: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    legacy: bool = False

    def names(self) -> list[str]:
        return sorted(self.sums)

    def means(self) -> dict[str, np.ndarray]:
        """What llama-quantize's load_imatrix passes to llama_model_quantize: per entry, flat float32 mean
        squared activations; a matrix (expert) that saw no activations gets 1s (legacy: its sums as they are)."""
        out = {}
        for name, sums in self.sums.items():
            counts = self.counts[name].astype(np.float64)
            rows = sums.reshape(len(counts), -1).astype(np.float64)
            if self.legacy:
                mean = np.where(counts[:, None] > 0, rows / np.maximum(counts, 1)[:, None], rows)
            else:
                mean = np.where(counts[:, None] > 0, rows / np.maximum(counts, 1)[:, None], 1.0)
            out[name] = np.ascontiguousarray(mean, dtype=np.float32).ravel()
        return out

    def save(self, path: str | Path, dataset_label: str | None = None) -> Path:
        """Write the GGUF imatrix format (llama-imatrix's save_imatrix), atomically; `dataset_label` (the text
        it was computed on) is appended to imatrix.datasets."""
        import gguf

        path = Path(path)
        datasets = [*self.datasets, *([dataset_label] if dataset_label else [])] or ["(unknown)"]
        # GGUFWriter always starts with general.architecture; llama-imatrix writes none, so neither do we.
        writer = gguf.GGUFWriter(path=None, arch="")
        writer.kv_data[0].clear()
        writer.add_type(gguf.GGUFType.IMATRIX)
        writer.add_array(KEY_DATASETS, datasets)
        writer.add_uint32(KEY_CHUNK_COUNT, int(self.chunk_count))
        writer.add_uint32(KEY_CHUNK_SIZE, int(self.chunk_size))
        for name in self.names():
            counts = np.asarray(self.counts[name], dtype=np.float32)
            sums = np.asarray(self.sums[name], dtype=np.float32).reshape(len(counts), -1)
            # ggml stores a tensor with as many dimensions as it has non-1 sizes: (n_cols,) for a dense
            # weight, (n_mat, n_cols) for experts; keeping that makes our files match llama-imatrix's.
            writer.add_tensor(name + SUMS_SUFFIX, sums[0] if len(counts) == 1 else sums)
            writer.add_tensor(name + COUNTS_SUFFIX, counts if len(counts) == 1 else counts.reshape(-1, 1))
        with atomic_path(path) as temporary:
            writer.write_header_to_file(temporary)
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
        return path


def read_imatrix(path: str | Path) -> Imatrix:
    """An importance matrix from a GGUF imatrix file or a legacy .dat file; a one-line error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such importance matrix file")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    return _read_gguf(path) if magic == b"GGUF" else _read_legacy(path)


def _read_gguf(path: Path) -> Imatrix:
    from gguf import GGMLQuantizationType, GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001 - a damaged file fails in gguf-py's parser in many ways
        raise ConversionError(f"{path}: not a readable GGUF file ({exc})") from None
    pairs: dict[str, dict[str, object]] = {}
    for tensor in reader.tensors:
        for suffix in (SUMS_SUFFIX, COUNTS_SUFFIX):
            if tensor.name.endswith(suffix):
                pairs.setdefault(tensor.name[: -len(suffix)], {})[suffix] = tensor
    if not pairs:
        kind = _field(reader, "general.type") or "model"
        raise ConversionError(f"{path}: not an importance matrix (a GGUF {kind} file without *.in_sum2 tensors); "
                              "compute one with `lcpp-zh imatrix`")
    sums, counts = {}, {}
    for name, pair in sorted(pairs.items()):
        if len(pair) != 2:
            raise ConversionError(f"{path}: {name} has sums without counts or counts without sums")
        sum_t, count_t = pair[SUMS_SUFFIX], pair[COUNTS_SUFFIX]
        if sum_t.tensor_type != GGMLQuantizationType.F32 or count_t.tensor_type != GGMLQuantizationType.F32:
            raise ConversionError(f"{path}: the sums and counts of {name} must be F32")
        count = np.rint(np.asarray(count_t.data, dtype=np.float64).ravel()).astype(np.int64)
        values = np.asarray(sum_t.data, dtype=np.float32).ravel()
        if len(count) == 0 or values.size % len(count):
            raise ConversionError(f"{path}: {name} has {values.size} sums for {len(count)} counts")
        sums[name] = values.reshape(len(count), -1).copy()
        counts[name] = count
    missing = [k for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE) if _field(reader, k) is None]
    if missing:  # llama-quantize refuses such a file too ("missing imatrix metadata")
        raise ConversionError(f"{path}: importance matrix without {', '.join(missing)} (not written by llama-imatrix "
                              "or lcpp-zh imatrix?)")
    datasets = _field(reader, KEY_DATASETS)
    return Imatrix(sums, counts, [str(d) for d in (datasets if isinstance(datasets, list) else [datasets])],
                   int(_field(reader, KEY_CHUNK_COUNT)), int(_field(reader, KEY_CHUNK_SIZE)))


def _field(reader, key: str):
    found = reader.fields.get(key)
    return None if found is None else found.contents()


def _read_legacy(path: Path) -> Imatrix:
    """llama.cpp's original binary format: n_entries, then per entry name, ncall, nval, nval floats holding
    mean * ncall; optionally the chunk count and the dataset name at the end (imatrix-loader.cpp)."""
    data = path.read_bytes()
    not_imatrix = ConversionError(f"{path}: not an importance matrix (neither GGUF nor llama.cpp's legacy "
                                  ".dat format); compute one with `lcpp-zh imatrix`")
    pos = 0

    def take(fmt: str) -> tuple:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise not_imatrix
        values = struct.unpack_from(fmt, data, pos)
        pos += size
        return values

    (n_entries,) = take("<i")
    if not 0 < n_entries <= 1_000_000:
        raise not_imatrix
    sums, counts = {}, {}
    for _ in range(n_entries):
        (length,) = take("<i")
        if not 0 < length <= 4096:
            raise not_imatrix
        try:
            name = take(f"<{length}s")[0].decode("utf-8")
        except UnicodeDecodeError:
            raise not_imatrix from None
        ncall, nval = take("<ii")
        if nval < 1 or pos + 4 * nval > len(data):
            raise not_imatrix
        sums[name] = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).reshape(1, -1).copy()
        counts[name] = np.array([ncall], dtype=np.int64)
        pos += 4 * nval
    chunk_count, datasets = 0, []
    if pos + 4 <= len(data):
        (chunk_count,) = take("<i")
        if pos + 4 <= len(data):
            (length,) = take("<i")
            if 0 < length <= len(data) - pos:
                datasets.append(data[pos: pos + length].decode("utf-8", errors="replace"))
    return Imatrix(sums, counts, datasets, chunk_count, 0, legacy=True)
