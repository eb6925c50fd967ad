"""Quantization with an importance matrix made on the way: the glue between convert/quantize.py (which never
runs a model) and lcpp_zh.eval.quantization.imatrix (which does). Used by `lcpp-zh quantize` and `lcpp-zh convert --quant`:
a given matrix is passed through; a calibration text, or a type that needs a matrix, gets one computed on the
unquantized GGUF into a temporary file that is removed afterwards.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lcpp_zh.common.atomic import check_writable
from lcpp_zh.convert.quantize import QuantType, needs_imatrix, parse_quant_type, quantize_gguf
from lcpp_zh.errors import ConversionError
from lcpp_zh.eval.texts import builtin_label, builtin_text, read_text

logger = logging.getLogger(__name__)

# A type that needs a matrix and got none is calibrated on this much of the built-in Chinese text:
# 32 chunks of 512 tokens, about 16k tokens, minutes for a 7B model on a CPU.
DEFAULT_CHUNKS = 32
DEFAULT_CTX = 512
COMPUTED_NAME = "(computed by lcpp-zh during quantization)"


@dataclass(frozen=True)
class Calibration:
    """Where the matrix comes from: a file (`imatrix`), a text file (`text`), or, when the type needs one,
    the built-in Chinese text. `notice` receives one line saying what is computed; `progress(done, total)`
    counts chunks."""

    imatrix: Path | None = None
    text: Path | None = None
    threads: int | None = None
    gpu_layers: int = 0
    notice: Callable[[str], None] | None = None
    progress: Callable[[int, int], None] | None = None

    def __post_init__(self) -> None:
        if self.imatrix is not None and self.text is not None:
            raise ConversionError("give either an importance matrix (--imatrix) or a calibration text "
                                  "(--calibration), not both")

    def wanted(self, qtype: QuantType) -> bool:
        """Whether quantizing to `qtype` uses a matrix."""
        return self.imatrix is not None or self.text is not None or needs_imatrix(qtype)


def quantize_calibrated(source: Path, destination: Path, qtype: str | QuantType, calibration: Calibration,
                        threads: int | None = None) -> Path:
    """quantize_gguf with the matrix `calibration` describes (none when it wants none); returns `destination`."""
    quant = qtype if isinstance(qtype, QuantType) else parse_quant_type(qtype)
    source, destination = Path(source), Path(destination)
    if calibration.imatrix is not None or not calibration.wanted(quant):
        return quantize_gguf(source, destination, quant, threads, imatrix=calibration.imatrix)
    check_writable(destination)  # before minutes of computing
    from lcpp_zh.eval.quantization.imatrix import compute_imatrix

    if calibration.text is not None:
        text, label, chunks = read_text(calibration.text), str(calibration.text), None
        what = f"on {calibration.text}"
    else:
        text, label, chunks = builtin_text("zh"), builtin_label("zh"), DEFAULT_CHUNKS
        what = (f"{quant.value} needs an importance matrix: computing one on the built-in Chinese text "
                f"(at most {DEFAULT_CHUNKS} chunks of {DEFAULT_CTX} tokens; --imatrix FILE or --calibration TEXT "
                "to choose)")
    if calibration.notice:
        calibration.notice(what if calibration.text is None else f"computing an importance matrix {what}")
    matrix = compute_imatrix(source, text, n_ctx=DEFAULT_CTX, n_chunks=chunks, n_threads=calibration.threads,
                             progress=calibration.progress, gpu_layers=calibration.gpu_layers)
    with tempfile.TemporaryDirectory(prefix="lcpp-zh-imatrix-") as folder:
        path = matrix.save(Path(folder) / "imatrix.gguf", label)
        return quantize_gguf(source, destination, quant, threads, imatrix=path, imatrix_name=COMPUTED_NAME)


def convert_calibrated(source: str | Path, destination: Path, quant: str | QuantType, calibration: Calibration,
                       **convert_options) -> Path:
    """convert_checkpoint(..., quant=...) with the matrix `calibration` describes: the checkpoint is converted
    to an unquantized GGUF beside `destination` (as convert_checkpoint does), calibrated, quantized, removed."""
    from lcpp_zh.convert.pipeline import convert_checkpoint

    quant_type = quant if isinstance(quant, QuantType) else parse_quant_type(quant)
    destination = Path(destination)
    if not calibration.wanted(quant_type):
        return convert_checkpoint(source, destination, quant=quant_type.value, **convert_options)
    check_writable(destination)
    # Fail on a bad matrix or text now rather than after the conversion.
    if calibration.imatrix is not None:
        from lcpp_zh.convert.imatrix_file import read_imatrix

        read_imatrix(calibration.imatrix)
    if calibration.text is not None:
        read_text(calibration.text)
    intermediate = destination.with_name(f".{destination.stem}.unquantized.gguf")
    try:
        convert_checkpoint(source, intermediate, **convert_options)
        return quantize_calibrated(intermediate, destination, quant_type, calibration)
    finally:
        intermediate.unlink(missing_ok=True)
