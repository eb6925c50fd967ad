"""Options that eval, imatrix and quants share: the built-in text, CPU threads and GPU layers of a
measuring run. One definition, so the three commands cannot drift apart in name, default or help."""

from __future__ import annotations

import click

from lcpp_zh.eval.texts import BUILTIN_TEXTS

lang_option = click.option(
    "--lang", type=click.Choice(list(BUILTIN_TEXTS)), default="zh",
    help="Built-in text when no --text: zh (论语 and 诗经), en (World Factbook introductions).")
threads_option = click.option(
    "--threads", type=click.IntRange(min=1), default=None, envvar="LCPP_ZH_THREADS",
    help="CPU threads [default: physical cores].")
gpu_layers_option = click.option(
    "--gpu-layers", type=click.IntRange(min=0), default=0, help="Layers offloaded to the GPU (999: all).")
