"""Options that eval, imatrix and quants share: the text (--text, --lang), --ctx, --chunks, CPU threads, GPU
layers, --json and -q. One definition each, so the three commands cannot drift apart in name, type, default or
help; the text itself is loaded by lcpp_zh.eval.texts.load_text for all three."""

from __future__ import annotations

from pathlib import Path

import click

from lcpp_zh.eval.texts import BUILTIN_TEXTS

text_option = click.option(
    "--text", "text_file", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
    help="UTF-8 text to measure on, read as llama.cpp's -f reads it [default: the built-in --lang text].")
lang_option = click.option(
    "--lang", type=click.Choice(list(BUILTIN_TEXTS)), default="zh",
    help="Built-in text when no --text: zh (论语 and 诗经), en (World Factbook introductions).")
threads_option = click.option(
    "--threads", type=click.IntRange(min=1), default=None, envvar="LCPP_ZH_THREADS",
    help="CPU threads [default: physical cores].")
gpu_layers_option = click.option(
    "--gpu-layers", type=click.IntRange(min=0), default=0, help="Layers offloaded to the GPU (999: all).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object with every figure.")
quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress bars (and no summary lines).")


def ctx_option(help: str, minimum: int = 8):  # noqa: A002 - click's own keyword
    """--ctx: tokens per chunk, 512 as in llama.cpp's tools; `minimum` where the computation needs more."""
    return click.option("--ctx", "n_ctx", type=click.IntRange(min=minimum), default=512, help=help)


def chunks_option(default: int | None = None, help: str = "At most this many chunks [default: the whole text]."):  # noqa: A002
    """--chunks: how many chunks of --ctx tokens are measured."""
    return click.option("--chunks", "n_chunks", type=click.IntRange(min=1), default=default, help=help)


def text_options(command):
    """--text and --lang together: every command that measures on a text takes both."""
    return text_option(lang_option(command))
