"""Conversion commands: convert, quantize, inspect, verify."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import click

from lcpp_zh.cli.lora_cmds import lora_options, pair_loras
from lcpp_zh.cli.progress import byte_progress, human_size, report_written, stage_progress
from lcpp_zh.convert.chat_templates import BUILTIN_TEMPLATES
from lcpp_zh.convert.pipeline import OUTTYPE_CHOICES, convert_checkpoint
from lcpp_zh.convert.quantize import QuantType, needs_imatrix
from lcpp_zh.convert.sampling import SAMPLING_CHOICES
from lcpp_zh.errors import LcppError

QUANT_CHOICES = click.Choice([q.value for q in QuantType], case_sensitive=False)
TEMPLATE_CHOICES = click.Choice([*BUILTIN_TEMPLATES, "none"])


def imatrix_options(command):
    """--imatrix FILE and --calibration TEXT, shared by convert and quantize."""
    command = click.option(
        "--calibration", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="TEXT",
        help="Compute an importance matrix on this UTF-8 text (all of it) and quantize with it.")(command)
    return click.option(
        "--imatrix", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
        help="Importance matrix (from `lcpp-zh imatrix` or llama-imatrix) to quantize with. Types that need one "
             f"({', '.join(q.value for q in QuantType if needs_imatrix(q))}) get one computed on the built-in "
             "Chinese text when neither --imatrix nor --calibration is given.")(command)


@contextlib.contextmanager
def _calibration(imatrix: Path | None, text: Path | None, threads: int | None, quiet: bool) -> Iterator:
    from lcpp_zh.eval.quantization.calibrate import Calibration

    with stage_progress(quiet) as bar:
        yield Calibration(imatrix=imatrix, text=text, threads=threads,
                          notice=None if quiet else (lambda line: click.echo(line, err=True)),
                          progress=(lambda done, total: bar("imatrix", done, total)) if bar else None)


@click.command("convert")
@click.argument("source")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="GGUF file to write (the quantized model when --quant is given).")
@click.option("--outtype", type=click.Choice(OUTTYPE_CHOICES), default="auto",
              help="Weight type of the converted file; auto keeps the checkpoint's 16-bit type.")
@click.option("--quant", type=QUANT_CHOICES, default=None, metavar="TYPE",
              help="Then quantize with llama.cpp's quantizer (Q4_K_M, Q5_K_M, Q8_0, ...: see `lcpp-zh quantize "
                   "--help`); the unquantized file is not kept.")
@click.option("--template", type=TEMPLATE_CHOICES, default=None,
              help="Chat template to embed; default: the model's own, or llama2-chinese for FlagAlpha/Atom.")
@click.option("--sampling", type=click.Choice(SAMPLING_CHOICES), default="auto",
              help="general.sampling.* defaults: auto = generation_config.json's, or FlagAlpha's recommended ones "
                   "for Atom / Llama2-Chinese that have none; checkpoint = generation_config.json's only.")
@imatrix_options
@lora_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
def convert(source: str, output: Path, outtype: str, quant: str | None, template: str | None, sampling: str,
            imatrix: Path | None, calibration: Path | None, lora: tuple[str, ...], lora_scale: tuple[float, ...],
            quiet: bool) -> None:
    """Convert a Hugging Face Llama checkpoint (folder or hub repo id) to GGUF.

    \b
    Examples:
      lcpp-zh convert ./Atom-7B-Chat -o atom-7b-chat.f16.gguf
      lcpp-zh convert FlagAlpha/Atom-7B-Chat -o atom.Q4_K_M.gguf --quant Q4_K_M
      HF_ENDPOINT=https://hf-mirror.com lcpp-zh convert FlagAlpha/Llama2-Chinese-7b-Chat -o l2c.gguf
      lcpp-zh convert ./Llama-2-7b-chat-hf --lora ./Llama2-Chinese-7b-Chat-LoRA -o merged.gguf
      lcpp-zh convert ./Atom-7B-Chat -o atom.IQ2_M.gguf --quant IQ2_M --calibration my-text.txt
    """
    loras = pair_loras(lora, lora_scale)
    if quant is None and (imatrix is not None or calibration is not None):
        raise click.UsageError("--imatrix and --calibration go with --quant TYPE")
    started = time.monotonic()
    with byte_progress("converting", quiet) as progress:
        options = {"outtype": outtype, "template": template, "progress": progress, "loras": loras,
                   "sampling": sampling}
        if quant is None:
            written = convert_checkpoint(source, output, **options)
        else:
            from lcpp_zh.eval.quantization.calibrate import convert_calibrated

            with _calibration(imatrix, calibration, None, quiet) as how:
                written = convert_calibrated(source, output, quant, how, **options)
    report_written(written, started, quiet)


@click.command("quantize")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-t", "--type", "qtype", type=QUANT_CHOICES, default="Q4_K_M", metavar="TYPE",
              help="Quantization type: " + ", ".join(q.value for q in QuantType) + ".")
@click.option("--threads", type=int, default=None, help="Threads for the quantizer (default: all CPUs).")
@imatrix_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary line.")
def quantize(source: Path, output: Path, qtype: str, threads: int | None, imatrix: Path | None,
             calibration: Path | None, quiet: bool) -> None:
    """Quantize a GGUF file with llama.cpp's quantizer, with an importance matrix when given one (or when the
    type needs one: then computed on the built-in Chinese text).

    \b
    Examples:
      lcpp-zh quantize atom.f16.gguf atom.Q4_K_M.gguf --type Q4_K_M
      lcpp-zh quantize atom.f16.gguf atom.IQ2_XS.gguf --type IQ2_XS --imatrix atom.imatrix.gguf
    """
    from lcpp_zh.eval.quantization.calibrate import quantize_calibrated

    started = time.monotonic()
    with _calibration(imatrix, calibration, threads, quiet) as how:
        written = quantize_calibrated(source, output, qtype, how, threads)
    report_written(written, started, quiet)


@click.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect(path: Path, as_json: bool) -> None:
    """Show what a GGUF file holds: architecture, sizes, vocabulary, tensor types, sampling defaults
    (general.sampling.*, which llama.cpp's tools take as their defaults), chat template."""
    from lcpp_zh.convert.inspect_gguf import summarize_gguf

    summary = summarize_gguf(path)
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False, indent=2))
        return
    rows = [
        ("file", f"{summary['path']} ({human_size(summary['size_bytes'])})"),
        ("name", summary["name"]),
        ("architecture", summary["architecture"]),
        ("weights", f"{summary['file_type']}, {summary['parameters'] / 1e6:.1f} M parameters"),
        ("layers / heads", f"{summary['layers']} layers, {summary['heads']} heads, {summary['kv_heads']} kv heads"),
        ("context", f"{summary['context_length']} (rope base {summary['rope_freq_base']})"),
        ("vocabulary", f"{summary['vocab_size']} tokens ({summary['tokenizer']}), "
                       f"bos {summary['bos_token_id']}, eos {summary['eos_token_id']}"),
        ("tensor types", ", ".join(f"{k} x{v}" for k, v in summary["tensor_types"].items())),
        ("sampling", ", ".join(f"{k} {v}" for k, v in summary["sampling"].items()) or "(none: the runtime's defaults)"),
    ]
    for key, value in rows:
        click.echo(f"{key:>15}: {value}")
    template = summary["chat_template"]
    click.echo(f"{'chat template':>15}: " + ("(none)" if not template else template[:200].replace("\n", "\\n")
                                            + ("…" if len(template) > 200 else "")))


@click.command("verify")
@click.argument("hf_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("gguf_path", metavar="FILE.gguf", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--no-logits", is_flag=True, help="Tokenizer parity only, even when transformers is installed.")
def verify(hf_dir: Path, gguf_path: Path, no_logits: bool) -> None:
    """Check a GGUF against its Hugging Face original; exits 1 on a mismatch.

    Tokenizer parity on a built-in corpus (Chinese, English, mixed, emoji, whitespace, special tokens);
    logits parity (NMSE, top-1 agreement) when the `verify` extra (transformers + torch) is installed.
    """
    from lcpp_zh.convert.inspect_gguf import summarize_gguf
    from lcpp_zh.verify.parity import check_logits, check_tokenizer

    tokens = check_tokenizer(hf_dir, gguf_path)
    click.echo(f"{'check':<20} {'result':<46} {'status'}")
    click.echo(f"{'tokenizer parity':<20} {f'{tokens.matched}/{tokens.total} strings identical':<46} "
               f"{'ok' if tokens.ok else 'MISMATCH'}")
    click.echo(f"{'':<20} reference: {tokens.reference}" + (f", {tokens.skipped} skipped" if tokens.skipped else ""))
    for text, expected, got in tokens.mismatches:
        click.echo(f"  {text[:40]!r}: original {expected[:12]} vs llama.cpp {got[:12]}")
    # Logits are compared only when the tokenizers agree: otherwise the prompts mean different things.
    logits = None if no_logits or not tokens.ok else check_logits(
        hf_dir, gguf_path, summarize_gguf(gguf_path)["file_type"])
    if logits is None:
        reason = ("skipped (tokenizers differ)" if not tokens.ok else "skipped (--no-logits)" if no_logits
                  else "skipped (install the verify extra)")
        click.echo(f"{'logits parity':<20} {reason:<46} -")
    else:
        result = f"NMSE {logits.nmse:.2e}, top-1 {logits.top1_agreement:.1%} of {logits.positions}"
        click.echo(f"{'logits parity':<20} {result:<46} {'ok' if logits.ok else 'MISMATCH'}")
    if not tokens.ok or (logits is not None and not logits.ok):
        raise LcppError(f"{gguf_path.name} does not match {hf_dir}")


COMMANDS = [convert, quantize, inspect, verify]
