"""Quantize a GGUF file with llama.cpp's own quantizer (`llama_model_quantize` via llama-cpp-python),
optionally guided by an importance matrix as llama-quantize --imatrix passes it (with its quantize.imatrix.*
metadata). The only place in the conversion pipeline that touches llama.cpp; it never computes a matrix
(lcpp_zh.eval.quantization.imatrix does). Output is atomic: written under a temporary name, renamed on success.
"""

from __future__ import annotations

import ctypes
import logging
import os
from enum import Enum
from pathlib import Path

from lcpp_zh.common.atomic import atomic_path
from lcpp_zh.common.llama_log import route_llama_logs
from lcpp_zh.convert.imatrix_file import Imatrix, read_imatrix
from lcpp_zh.errors import ConversionError

logger = logging.getLogger(__name__)


class QuantType(str, Enum):
    """llama.cpp's file types (llama_ftype), by the names its quantize tool uses."""

    F32 = "F32"
    F16 = "F16"
    BF16 = "BF16"
    Q8_0 = "Q8_0"
    Q6_K = "Q6_K"
    Q5_K_M = "Q5_K_M"
    Q5_K_S = "Q5_K_S"
    Q5_1 = "Q5_1"
    Q5_0 = "Q5_0"
    Q4_K_M = "Q4_K_M"
    Q4_K_S = "Q4_K_S"
    Q4_1 = "Q4_1"
    Q4_0 = "Q4_0"
    Q3_K_L = "Q3_K_L"
    Q3_K_M = "Q3_K_M"
    Q3_K_S = "Q3_K_S"
    Q2_K = "Q2_K"
    Q2_K_S = "Q2_K_S"
    IQ4_NL = "IQ4_NL"
    IQ4_XS = "IQ4_XS"
    IQ3_M = "IQ3_M"
    IQ3_S = "IQ3_S"
    IQ3_XS = "IQ3_XS"
    IQ3_XXS = "IQ3_XXS"
    IQ2_M = "IQ2_M"
    IQ2_S = "IQ2_S"
    IQ2_XS = "IQ2_XS"
    IQ2_XXS = "IQ2_XXS"
    IQ1_M = "IQ1_M"
    IQ1_S = "IQ1_S"
    TQ1_0 = "TQ1_0"
    TQ2_0 = "TQ2_0"
    Q2_0 = "Q2_0"
    Q1_0 = "Q1_0"
    MXFP4_MOE = "MXFP4_MOE"

    @property
    def ftype(self) -> int:
        import llama_cpp

        name = "LLAMA_FTYPE_ALL_F32" if self is QuantType.F32 else f"LLAMA_FTYPE_MOSTLY_{self.value}"
        return getattr(llama_cpp, name)


# llama.cpp refuses these without an importance matrix (llama-quant.cpp's tensor_requires_imatrix: tensors of
# type IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S or IQ3_XXS, and Q2_K within Q2_K_S). IQ2_M's default type is IQ2_S;
# IQ3_XS makes attn_q, attn_k and the middle ffn_gate/ffn_up IQ3_XXS. tests/eval/test_imatrix.py checks this list
# against llama.cpp's own dry run.
NEEDS_IMATRIX = frozenset({QuantType.IQ1_S, QuantType.IQ1_M, QuantType.IQ2_XXS, QuantType.IQ2_XS, QuantType.IQ2_S,
                           QuantType.IQ2_M, QuantType.IQ3_XXS, QuantType.IQ3_XS, QuantType.Q2_K_S})
# llama-quantize's metadata keys for the matrix it used (tools/quantize/quantize.cpp)
KEY_IMATRIX_FILE = "quantize.imatrix.file"
KEY_IMATRIX_DATASET = "quantize.imatrix.dataset"
KEY_IMATRIX_ENTRIES = "quantize.imatrix.entries_count"
KEY_IMATRIX_CHUNKS = "quantize.imatrix.chunks_count"


def needs_imatrix(qtype: str | QuantType) -> bool:
    """Whether llama.cpp refuses `qtype` without an importance matrix (for models whose rows are whole
    256-column blocks; narrower tensors fall back to types that need none)."""
    return (qtype if isinstance(qtype, QuantType) else parse_quant_type(qtype)) in NEEDS_IMATRIX


def parse_quant_type(name: str) -> QuantType:
    """A quant type from a name as users write it (q4_k_m, Q4_K_M)."""
    try:
        return QuantType(name.upper())
    except ValueError:
        choices = ", ".join(q.value for q in QuantType)
        raise ConversionError(f"unknown quantization type {name!r}; choose one of {choices}") from None


def quantize_gguf(source: Path, destination: Path, qtype: str | QuantType, threads: int | None = None, *,
                  imatrix: Path | None = None, imatrix_name: str | None = None) -> Path:
    """Quantize `source` (an F32/F16/BF16 GGUF) into `destination`; returns `destination`. `imatrix` (a GGUF or
    legacy .dat importance matrix) guides the quantizer; `imatrix_name` is what quantize.imatrix.file
    records (default: the path as given, as llama-quantize records it)."""
    quant = qtype if isinstance(qtype, QuantType) else parse_quant_type(qtype)
    source, destination = Path(source), Path(destination)
    if imatrix is None and quant in NEEDS_IMATRIX:
        raise ConversionError(f"{quant.value} needs an importance matrix: pass one (--imatrix FILE, made by "
                              "`lcpp-zh imatrix` or llama-imatrix), or use Q2_K, Q3_K_M, IQ3_S or a larger type")
    if not source.is_file():
        raise ConversionError(f"{source}: no such file")
    if source.resolve() == destination.resolve():
        raise ConversionError(f"{destination}: the output must differ from the input")
    import llama_cpp

    route_llama_logs()  # llama.cpp logs every tensor otherwise
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = quant.ftype
    params.nthread = threads or os.cpu_count() or 1
    keep_alive = None
    if imatrix is not None:
        matrix = read_imatrix(imatrix)
        check_imatrix_fits(matrix, source, Path(imatrix))
        keep_alive = _imatrix_params(params, matrix, str(imatrix) if imatrix_name is None else imatrix_name)
    with atomic_path(destination) as temporary:
        logger.info("quantizing %s to %s%s", source.name, quant.value, " with an importance matrix" if keep_alive else "")
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(temporary).encode(), params)
        if status != 0 or not temporary.is_file():
            raise ConversionError(f"{source}: llama.cpp could not quantize it to {quant.value} (not a valid GGUF "
                                  "model? run with -vv for llama.cpp's log)")
    del keep_alive  # the arrays llama.cpp read from
    return destination


def check_imatrix_fits(matrix: Imatrix, model: Path, imatrix_path: Path) -> None:
    """Every entry names a weight of `model` with as many columns (times experts) as it has values, which is
    what llama.cpp checks, tensor by tensor, only once it has started writing."""
    from gguf import GGUFReader

    try:
        shapes = {t.name: [int(n) for n in t.shape] for t in GGUFReader(str(model)).tensors}
    except (ValueError, OSError) as exc:
        raise ConversionError(f"{model}: not a readable GGUF model ({exc})") from None
    absent = [name for name in matrix.names() if name not in shapes]
    if absent:
        raise ConversionError(f"{imatrix_path}: {len(absent)} of its {len(matrix.sums)} entries name tensors "
                              f"{model.name} lacks ({absent[0]}, ...): computed for another model?")
    for name in matrix.names():
        shape = shapes[name]
        expected = shape[0] * (shape[2] if len(shape) > 2 else 1)
        if matrix.sums[name].size != expected:
            raise ConversionError(f"{imatrix_path}: {matrix.sums[name].size} values for {name}, whose rows in "
                                  f"{model.name} need {expected}: computed for another model?")


def _imatrix_params(params, matrix: Imatrix, file_label: str) -> tuple:
    """Point `params` at the matrix (llama_model_imatrix_data entries, null-terminated) and at llama-quantize's
    kv overrides; returns what must stay alive while llama.cpp quantizes."""
    import llama_cpp

    means = matrix.means()
    names = {name: name.encode() for name in means}
    entries = (llama_cpp.llama_model_imatrix_data * (len(means) + 1))()
    for i, (name, values) in enumerate(means.items()):
        entries[i].name = names[name]
        entries[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = values.size
    entries[len(means)].name = None  # the terminator llama.cpp stops at
    overrides = [(KEY_IMATRIX_FILE, file_label)]
    if matrix.datasets:  # llama-quantize records the first dataset only
        overrides.append((KEY_IMATRIX_DATASET, matrix.datasets[0]))
    overrides.append((KEY_IMATRIX_ENTRIES, len(means)))
    if matrix.chunk_count > 0:
        overrides.append((KEY_IMATRIX_CHUNKS, matrix.chunk_count))
    kv = (llama_cpp.llama_model_kv_override * (len(overrides) + 1))()  # zeroed: the last is the terminator
    for i, (key, value) in enumerate(overrides):
        item = kv[i]
        item.key = key.encode()
        if isinstance(value, int):
            item.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
            item.value.val_i64 = value
        else:
            item.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            item.value.val_str = _c_string(value, 127)
    params.imatrix = entries
    params.kv_overrides = kv
    return entries, kv, means, names


def _c_string(text: str, limit: int) -> bytes:
    """UTF-8 cut to `limit` bytes as llama-quantize's strncpy cuts it, but never inside a character."""
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore").encode("utf-8")
