"""The importance-matrix command: imatrix (llama-imatrix's computation, in its GGUF imatrix format).

Thin: options here, the computing in lcpp_zh.eval.quantization.imatrix, the file format in
lcpp_zh.convert.imatrix_file. The written path (or --json) to stdout; the progress bar and the summary line
to stderr.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from lcpp_zh.cli.measure_options import (
    chunks_option,
    ctx_option,
    gpu_layers_option,
    json_option,
    quiet_option,
    text_options,
    threads_option,
)
from lcpp_zh.cli.progress import stage_progress
from lcpp_zh.eval.quantization.imatrix import DEFAULT_BATCH, DEFAULT_UBATCH


@click.command("imatrix")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Importance matrix to write (GGUF imatrix format, as llama-imatrix writes it).")
@text_options
# At least 16: llama-imatrix skips multiplications of fewer rows (imatrix.MIN_ROWS), so a smaller chunk sees none.
@ctx_option("Tokens per chunk, each starting with BOS (llama-imatrix's -c).", minimum=16)
# -b and -ub change the matrix, not just the speed (by up to 1e-3 relative on attn_output at ctx 128): they decide
# how many chunks share a decode and how llama.cpp cuts it into micro-batches, hence the rows each attention
# sees at once. With llama-imatrix's defaults, and the same -b/-ub, the two files' sums agree to the bit.
@click.option("-b", "--batch", "n_batch", type=click.IntRange(min=1), default=DEFAULT_BATCH, show_default=True,
              help="Tokens per decode: a multiple of --ctx (batch / ctx chunks side by side) or less than it "
              "(llama-imatrix's -b).")
@click.option("--ubatch", "n_ubatch", type=click.IntRange(min=1), default=DEFAULT_UBATCH, show_default=True,
              help="Tokens per compute step within a decode (llama-imatrix's -ub).")
@chunks_option()
@threads_option
@gpu_layers_option
@json_option
@quiet_option
def imatrix(model: Path, output: Path, text_file: Path | None, lang: str, n_ctx: int, n_batch: int, n_ubatch: int,
            n_chunks: int | None, threads: int | None, gpu_layers: int, as_json: bool, quiet: bool) -> None:
    """Compute the importance matrix of MODEL.gguf over a text, as llama.cpp's llama-imatrix does (the squared
    activations entering each matrix multiplication, summed, with counts). llama-quantize --imatrix and
    `lcpp-zh quantize --imatrix` read it; the IQ1, IQ2, IQ3_XXS, IQ3_XS and Q2_K_S types need one.

    \b
    Examples:
      lcpp-zh imatrix atom.f16.gguf -o atom.imatrix.gguf
      lcpp-zh imatrix atom.f16.gguf --text calibration.txt --chunks 100 -o atom.imatrix.gguf
      lcpp-zh imatrix atom.f16.gguf --ctx 128 -b 128 -o atom.imatrix.gguf   # as llama-imatrix -c 128 -b 128
      lcpp-zh quantize atom.f16.gguf atom.IQ2_XS.gguf --type IQ2_XS --imatrix atom.imatrix.gguf
    """
    from lcpp_zh.common.atomic import check_writable
    from lcpp_zh.eval.quantization.imatrix import compute_imatrix
    from lcpp_zh.eval.texts import load_text

    check_writable(output)
    if output.resolve() == model.resolve():
        raise click.UsageError("the output must differ from the model")
    text, label = load_text(text_file, lang)
    started = time.monotonic()
    with stage_progress(quiet or as_json) as bar:
        progress = (lambda done, total: bar("imatrix", done, total)) if bar else None
        matrix = compute_imatrix(model, text, n_ctx=n_ctx, n_chunks=n_chunks, n_threads=threads,
                                 progress=progress, n_batch=n_batch, n_ubatch=n_ubatch, gpu_layers=gpu_layers)
    matrix.save(output, label)
    seconds = time.monotonic() - started
    if as_json:
        click.echo(json.dumps({"path": str(output), "model": str(model), "dataset": label, "entries": len(matrix.sums),
                               "chunks": matrix.chunk_count, "chunk_size": matrix.chunk_size,
                               "tokens": matrix.chunk_count * matrix.chunk_size, "seconds": round(seconds, 3)},
                              ensure_ascii=False, indent=2))
        return
    if not quiet:
        click.echo(f"wrote {output}: {len(matrix.sums)} weights, {matrix.chunk_count} chunks of {matrix.chunk_size} "
                   f"tokens from {label}, in {seconds:.1f} s", err=True)
    click.echo(str(output))


COMMANDS = [imatrix]
