"""The quantization advisor: `lcpp-zh quants MODEL [--types ...] [--memory 8GB]`.

Thin: options, the table, the recommendation line and the plot's file name here; the measuring in
lcpp_zh.eval.advisor.run, the picture in lcpp_zh.eval.advisor.plot. Table to stdout, progress bars to stderr.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from lcpp_zh.cli.measure_options import (
    chunks_option,
    ctx_option,
    json_option,
    quiet_option,
    text_options,
    threads_option,
)
from lcpp_zh.cli.progress import stage_progress
from lcpp_zh.eval.advisor.run import DEFAULT_KV_CTX, DEFAULT_LADDER, IMATRIX_LADDER


def _cell(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def format_table(report: dict) -> list[str]:
    """The table's lines, columns aligned: the base first, then the types by size."""
    from lcpp_zh.eval.advisor.pick import format_size

    header = ("type", "size", "bpw", "PPL", "mean KLD", "same top", "pp tok/s", "tg tok/s", "needs", "fits")
    lines = [header]
    for r in report["rows"]:
        name = r["type"] + (" (base)" if r["base"] else "") + (" +imatrix" if r["imatrix"] else "")
        if r["error"]:
            lines.append((name, "failed: " + r["error"], "", "", "", "", "", "", "", ""))
            continue
        kld = "0 (base)" if r["base"] else (f"{r['kld_mean']:.4f} ± {r['kld_error']:.4f}"
                                            if r["kld_mean"] is not None else "—")
        same = "—" if r["same_top"] is None else f"{100 * r['same_top']:.1f} %"
        ppl = "—" if r["ppl"] is None else f"{r['ppl']:.3f} ± {r['ppl_error']:.3f}"
        lines.append((name, format_size(r["size"]), f"{r['bpw']:.2f}", ppl, kld, same, _cell(r["pp_tok_s"], ".0f"),
                      _cell(r["tg_tok_s"], ".1f"), format_size(r["needed"]), "yes" if r["fits"] else "no"))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    left = {0}  # names left-aligned, figures right-aligned
    out = []
    for row in lines:
        if row[1].startswith("failed: "):
            out.append(f"{row[0]:<{widths[0]}}  {row[1]}")
            continue
        out.append("  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths,
                                                                                                      strict=True))))
    return out


def _plot_choice(model: str, plot: str | None, no_plot: bool) -> tuple[Path | None, bool]:
    """(PNG to write, whether to draw the terminal plot), checked before any measuring. The PNG needs matplotlib
    (the `plot` extra): without it the default is the terminal plot, and asking for a PNG is an error."""
    from lcpp_zh.errors import LcppError
    from lcpp_zh.eval.advisor.plot import PLOT_EXTRA, png_available
    from lcpp_zh.eval.advisor.run import model_label

    if no_plot:
        return None, False
    if plot == "terminal":
        return None, True
    if plot is None:
        return (Path(f"quants-{model_label(model)}.png"), False) if png_available() else (None, True)
    if Path(plot).suffix.lower() != ".png":
        raise click.BadParameter(f"{plot}: the plot is a PNG; give a name ending in .png, or `terminal`",
                                 param_hint="--plot")
    if not png_available():
        raise LcppError(f"--plot {plot}: a PNG needs matplotlib: {PLOT_EXTRA} (or --plot terminal)")
    return Path(plot), False


@click.command("quants")
@click.argument("model")
@click.option("--types", "types", multiple=True, metavar="TYPE,TYPE,...",
              help=f"Quantizations to try [default: {','.join(DEFAULT_LADDER)}; with the importance matrix also "
                   f"{','.join(IMATRIX_LADDER)}].")
@click.option("--memory", default=None, metavar="SIZE",
              help="Memory to fit in, e.g. 8GB, 7.5GiB, 512MB [default: this machine's available memory].")
@click.option("--kv-ctx", type=click.IntRange(min=0), default=DEFAULT_KV_CTX,
              help="Context the memory estimate reserves a KV cache (f16) for.")
@click.option("--overhead", default="512MiB", metavar="SIZE",
              help="Memory added to each estimate for llama.cpp's buffers and the process.")
@text_options
@ctx_option("Tokens per evaluation chunk.")
@chunks_option(20, "Chunks scored per type.")
@click.option("--batch", "n_batch", type=click.IntRange(min=1), default=2048, help="Tokens per decode in scoring.")
@threads_option
@click.option("--pp", "n_prompt", type=click.IntRange(min=0), default=64,
              help="Prompt tokens timed per type (llama-bench's -p); 0 with --tg 0 times nothing.")
@click.option("--tg", "n_gen", type=click.IntRange(min=0), default=64,
              help="Tokens generated (greedy) per type to time generation (llama-bench's -n).")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Keep the quantized files (and F16, base logits, matrix) in DIR; reruns reuse the logits.")
@click.option("--imatrix", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="Importance matrix for the IQ types [default: computed once from the base].")
@click.option("--imatrix-chunks", type=click.IntRange(min=1), default=64,
              help="Chunks of --ctx tokens the matrix is computed over.")
@click.option("--calibration", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="TEXTFILE",
              help="Text to compute the matrix on [default: the part of the text that is not scored].")
@click.option("--plot", "plot", default=None, metavar="FILE.png|terminal",
              help="Where to draw KLD against size [default: quants-MODEL.png here with matplotlib (the `plot` "
                   "extra), else below the table]; `terminal` draws it below the table.")
@click.option("--no-plot", is_flag=True, help="Draw no plot.")
@json_option
@quiet_option
def quants(model: str, types: tuple[str, ...], memory: str | None, kv_ctx: int, overhead: str,
           text_file: Path | None, lang: str, n_ctx: int, n_chunks: int, n_batch: int, threads: int | None,
           n_prompt: int, n_gen: int, keep: Path | None, imatrix: Path | None, imatrix_chunks: int, calibration: Path | None, plot: str | None, no_plot: bool,
           as_json: bool, quiet: bool) -> None:
    """Which quantization of MODEL to run here: quantize to a ladder of types, score each against the
    unquantized model (perplexity, mean KL divergence, same top token, as llama-perplexity does), time
    generation, and recommend the best quality that fits in memory. MODEL is an F16/BF16/F32 GGUF, a
    Hugging Face folder or a repo id (converted to F16 first).

    \b
    Examples:
      lcpp-zh quants ./Atom-7B --memory 8GB
      lcpp-zh quants atom-7b.f16.gguf --types Q4_K_M,Q5_K_M,Q6_K --plot terminal
      lcpp-zh quants FlagAlpha/Atom-7B-Chat --keep ./atom-quants --json
    """
    from lcpp_zh.eval.advisor.pick import parse_memory
    from lcpp_zh.eval.advisor.plot import PLOT_EXTRA, plot_points, render_terminal, write_png
    from lcpp_zh.eval.advisor.run import AdvisorSettings, run_advisor
    from lcpp_zh.eval.measure.perplexity import EvalSettings
    from lcpp_zh.eval.texts import load_text, read_text

    names = tuple(n for group in types for n in group.split(",") if n.strip()) or None
    limit = parse_memory(memory) if memory is not None else None
    text, label = load_text(text_file, lang)
    plot_file, terminal = _plot_choice(model, plot, no_plot)
    settings = AdvisorSettings(
        types=names, eval=EvalSettings(n_ctx=n_ctx, n_batch=n_batch, n_chunks=n_chunks, n_threads=threads),
        memory=limit, memory_label=memory, kv_ctx=kv_ctx, overhead=parse_memory(overhead), keep=keep,
        imatrix=imatrix, imatrix_chunks=imatrix_chunks, calibration=read_text(calibration) if calibration else None,
        n_prompt=n_prompt, n_gen=n_gen)
    with stage_progress(quiet or as_json, keep=("types",)) as progress:
        report = run_advisor(model, text, label, settings, progress)
    points, size_limit = plot_points(report)
    title = (f"{Path(model).name}: mean KLD from {Path(report.base_path).name} on {label} "
             f"({report.chunks} chunks of {n_ctx} tokens)")
    if plot_file is not None:
        write_png(points, size_limit, plot_file, title)
    out = report.as_dict()
    out["plot"] = str(plot_file) if plot_file else None
    if as_json:
        click.echo(json.dumps(out, ensure_ascii=False, indent=2))
        return
    click.echo(f"{report.model}: on {label}, {report.chunks} chunks of {report.n_ctx} tokens; memory "
               f"{report.memory_label}, estimated as file + KV cache at {report.kv_ctx} tokens + overhead")
    for line in format_table(out):
        click.echo(line)
    reason = report.recommendation.reason if report.recommendation else "no recommendation"
    click.echo(f"recommendation: {reason}")
    if terminal:
        click.echo(render_terminal(points, size_limit))
        if plot is None and not quiet:  # the default without matplotlib: say how to get the picture
            click.echo(f"for a PNG of this plot: {PLOT_EXTRA}", err=True)
    if plot_file is not None and not quiet:
        click.echo(f"wrote {plot_file}", err=True)


COMMANDS = [quants]
