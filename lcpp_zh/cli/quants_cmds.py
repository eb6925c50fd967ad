"""The quantization advisor: `lcpp-zh quants MODEL [--types ...] [--memory 8GB]`.

Thin: options, the table, the recommendation line and the plot's file name here; the measuring in
lcpp_zh.eval.advisor, the picture in lcpp_zh.eval.advisor_plot. Table to stdout, progress bars to stderr.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from lcpp_zh.cli.measure_options import lang_option, threads_option
from lcpp_zh.cli.progress import stage_progress
from lcpp_zh.eval.advisor import DEFAULT_KV_CTX, DEFAULT_LADDER, IMATRIX_LADDER


def _cell(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def format_table(report: dict) -> list[str]:
    """The table's lines, columns aligned: the base first, then the types by size."""
    from lcpp_zh.eval.advisor_pick import format_size

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


def _default_plot_name(model: str) -> Path:
    from lcpp_zh.eval.advisor import model_label

    return Path(f"quants-{model_label(model)}.png")


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
@click.option("--text", "text_file", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="UTF-8 text to score on [default: the built-in --lang text].")
@lang_option
@click.option("--ctx", "n_ctx", type=click.IntRange(min=8), default=512, help="Tokens per evaluation chunk.")
@click.option("--chunks", "n_chunks", type=click.IntRange(min=1), default=20, help="Chunks scored per type.")
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
              help="Where to draw KLD against size [default: quants-MODEL.png here]; `terminal` draws it below "
                   "the table.")
@click.option("--no-plot", is_flag=True, help="Draw no plot.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with every figure.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
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
    from lcpp_zh.eval.advisor import AdvisorSettings, run_advisor
    from lcpp_zh.eval.advisor_pick import parse_memory
    from lcpp_zh.eval.advisor_plot import plot_points, render_terminal, write_png
    from lcpp_zh.eval.perplexity import EvalSettings
    from lcpp_zh.eval.texts import builtin_text, read_text

    names = tuple(n for group in types for n in group.split(",") if n.strip()) or None
    limit = parse_memory(memory) if memory is not None else None
    if text_file is not None:
        text, label = read_text(text_file), str(text_file)
    else:
        text, label = builtin_text(lang), f"built-in {lang}"
    plot_file = None if no_plot or plot == "terminal" else Path(plot) if plot else _default_plot_name(model)
    if plot_file is not None and plot_file.suffix.lower() != ".png":
        raise click.BadParameter(f"{plot_file}: the plot is a PNG; give a name ending in .png, or `terminal`",
                                 param_hint="--plot")
    settings = AdvisorSettings(
        types=names, eval=EvalSettings(n_ctx=n_ctx, n_batch=n_batch, n_chunks=n_chunks, n_threads=threads),
        memory=limit, memory_label=memory, kv_ctx=kv_ctx, overhead=parse_memory(overhead), keep=keep,
        imatrix=imatrix, imatrix_chunks=imatrix_chunks, calibration=read_text(calibration) if calibration else None, n_prompt=n_prompt,
        n_gen=n_gen)
    with stage_progress(quiet or as_json, keep=("types",)) as progress:
        report = run_advisor(model, text, label, settings, progress)
    points, size_limit = plot_points(report)
    title = (f"{Path(model).name}: mean KLD from {Path(report.base_path).name} on the {label} text "
             f"({report.chunks} chunks of {n_ctx} tokens)")
    if plot_file is not None:
        write_png(points, size_limit, plot_file, title)
    out = report.as_dict()
    out["plot"] = str(plot_file) if plot_file else None
    if as_json:
        click.echo(json.dumps(out, ensure_ascii=False, indent=2))
        return
    click.echo(f"{report.model}: {label} text, {report.chunks} chunks of {report.n_ctx} tokens; memory "
               f"{report.memory_label}, estimated as file + KV cache at {report.kv_ctx} tokens + overhead")
    for line in format_table(out):
        click.echo(line)
    reason = report.recommendation.reason if report.recommendation else "no recommendation"
    click.echo(f"recommendation: {reason}")
    if plot == "terminal" and not no_plot:
        click.echo(render_terminal(points, size_limit))
    if plot_file is not None and not quiet:
        click.echo(f"wrote {plot_file}", err=True)


COMMANDS = [quants]
