"""LoRA commands and options: `convert-lora`, and the --lora/--lora-scale options of `convert` (merging).

The work is in lcpp_zh.convert.lora_merge (merge while converting) and lcpp_zh.convert.lora_adapter (GGUF
LoRA adapters for llama.cpp's runtime); this module only parses options and reports what was written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from lcpp_zh.cli.progress import report_written
from lcpp_zh.convert.lora_adapter import ADAPTER_OUTTYPES


def pair_loras(loras: Sequence[str], scales: Sequence[float]) -> list[tuple[str, float]]:
    """Pair each --lora with the --lora-scale at the same position (1.0 where none is given)."""
    if len(scales) > len(loras):
        raise click.UsageError(f"{len(scales)} --lora-scale values for {len(loras)} --lora adapters")
    return [(path, scales[i] if i < len(scales) else 1.0) for i, path in enumerate(loras)]


def lora_options(func: Callable) -> Callable:
    """Add --lora (repeatable) and --lora-scale (repeatable, by position) to a conversion command; the
    command receives `lora: tuple[str, ...]` and `lora_scale: tuple[float, ...]` (see pair_loras)."""
    func = click.option(
        "--lora-scale", "lora_scale", type=float, multiple=True, metavar="SCALE",
        help="Scale of the --lora at the same position (default 1.0 = as trained; 0 = no effect).")(func)
    func = click.option(
        "--lora", "lora", multiple=True, metavar="ADAPTER",
        help="PEFT LoRA adapter (folder or hub repo id) to merge into the weights; repeat for several, "
             "applied in order.")(func)
    return func


@click.command("convert-lora")
@click.argument("adapter")
@click.option("--base", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The base model's Hugging Face folder (config.json is enough); default: the adapter's "
                   "base_model_name_or_path when that is a local folder.")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="GGUF LoRA adapter file to write.")
@click.option("--outtype", type=click.Choice([*ADAPTER_OUTTYPES, "auto"]), default="f32",
              help="Type of the lora_a/lora_b tensors (as llama.cpp's convert_lora_to_gguf.py).")
@click.option("-q", "--quiet", is_flag=True, help="No summary line.")
def convert_lora(adapter: str, base: Path | None, output: Path, outtype: str, quiet: bool) -> None:
    """Convert a PEFT LoRA adapter (folder or hub repo id) to a GGUF LoRA adapter that llama.cpp applies
    at runtime.

    Adapters that carry full weights (a resized vocabulary, modules_to_save) cannot be runtime
    adapters: merge those with `lcpp-zh convert BASE --lora ADAPTER_DIR -o merged.gguf`.

    \b
    Examples:
      lcpp-zh convert-lora FlagAlpha/Llama2-Chinese-7b-Chat-LoRA --base ./Llama-2-7b-chat-hf -o zh-lora.gguf
      lcpp-zh chat llama-2-7b-chat.Q4_K_M.gguf --lora zh-lora.gguf --lora-scale 0.8
    """
    from lcpp_zh.convert.lora_adapter import convert_lora as write_adapter

    started = time.monotonic()
    written = write_adapter(adapter, base, output, outtype)
    report_written(written, started, quiet)


COMMANDS = [convert_lora]
