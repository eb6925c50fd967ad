"""Quantize a GGUF file with llama.cpp's own quantizer (`llama_model_quantize` via llama-cpp-python).

The only place in the conversion pipeline that touches llama.cpp. Output is atomic: written under a
temporary name and renamed when llama.cpp reports success.
"""

from __future__ import annotations

import logging
import os
from enum import Enum
from pathlib import Path

from lcpp_zh.convert.atomic import atomic_path
from lcpp_zh.convert.llama_log import route_llama_logs
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

    @property
    def ftype(self) -> int:
        import llama_cpp

        name = "LLAMA_FTYPE_ALL_F32" if self is QuantType.F32 else f"LLAMA_FTYPE_MOSTLY_{self.value}"
        return getattr(llama_cpp, name)


# llama.cpp's quantize tool refuses these without an importance matrix: they lose too much quality otherwise.
NEEDS_IMATRIX = {QuantType.IQ1_S, QuantType.IQ1_M, QuantType.IQ2_XXS, QuantType.IQ2_XS, QuantType.IQ2_S,
                 QuantType.Q2_K_S}


def parse_quant_type(name: str) -> QuantType:
    """A quant type from a name as users write it (q4_k_m, Q4_K_M)."""
    try:
        return QuantType(name.upper())
    except ValueError:
        choices = ", ".join(q.value for q in QuantType)
        raise ConversionError(f"unknown quantization type {name!r}; choose one of {choices}") from None


def quantize_gguf(source: Path, destination: Path, qtype: str | QuantType, threads: int | None = None) -> Path:
    """Quantize `source` (an F32/F16/BF16 GGUF) into `destination`; returns `destination`."""
    quant = qtype if isinstance(qtype, QuantType) else parse_quant_type(qtype)
    if quant in NEEDS_IMATRIX:
        raise ConversionError(
            f"{quant.value} needs an importance matrix, which lcpp-zh does not compute yet; "
            "use Q2_K, Q3_K_M, IQ3_S or a larger type instead"
        )
    source, destination = Path(source), Path(destination)
    if not source.is_file():
        raise ConversionError(f"{source}: no such file")
    if source.resolve() == destination.resolve():
        raise ConversionError(f"{destination}: the output must differ from the input")
    import llama_cpp

    route_llama_logs()  # llama.cpp logs every tensor otherwise
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = quant.ftype
    params.nthread = threads or os.cpu_count() or 1
    with atomic_path(destination) as temporary:
        logger.info("quantizing %s to %s", source.name, quant.value)
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(temporary).encode(), params)
        if status != 0 or not temporary.is_file():
            raise ConversionError(f"{source}: llama.cpp could not quantize it to {quant.value} (not a valid GGUF model?)")
    return destination
