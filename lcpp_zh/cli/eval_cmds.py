"""Quality commands: eval (perplexity, and KL divergence against a base model, as llama-perplexity does).

Thin: options here, the measuring in lcpp_zh.eval.measure.perplexity. Figures to stdout (a table, or --json),
the progress bar to stderr.
"""

from __future__ import annotations

import json
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


def _print_table(result: dict, text_label: str) -> None:
    rows = [("model", result["model"]), ("text", text_label),
            ("chunks", f"{result['chunks']} of {result['n_ctx']} tokens, {result['tokens_scored']} tokens scored")]
    kld = result["kld"]
    if kld is None:
        rows.append(("PPL", f"{result['ppl']:.4f} ± {result['ppl_error']:.5f}"))
    else:
        pct = kld["kld_percentiles"]
        rows += [
            ("base", result["base"]),
            ("PPL(Q)", f"{kld['ppl']:.6f} ± {kld['ppl_error']:.6f}"),
            ("PPL(base)", f"{kld['ppl_base']:.6f} ± {kld['ppl_base_error']:.6f}"),
            ("ln(PPL(Q)/base)", f"{kld['ln_ppl_ratio']:.6f} ± {kld['ln_ppl_ratio_error']:.6f}"),
            ("mean KLD", f"{kld['kld_mean']:.6f} ± {kld['kld_error']:.6f}"),
            ("KLD percentiles", ", ".join(f"{k} {v:.6f}" for k, v in pct.items())),
            ("same top token", f"{100 * kld['same_top']:.3f} ± {100 * kld['same_top_error']:.3f} %"),
            ("RMS Δp", f"{100 * kld['p_diff_rms']:.3f} ± {100 * kld['p_diff_rms_error']:.3f} %"),
            ("mean Δp", f"{100 * kld['p_diff_mean']:.3f} ± {100 * kld['p_diff_error']:.3f} %"),
        ]
    if result.get("base_logits"):
        rows.append(("saved", f"base log-probabilities in {result['base_logits']}"))
    rows.append(("time", f"{result['seconds']:.1f} s ({result['tokens_per_s']:.0f} tokens/s)"))
    for key, value in rows:
        click.echo(f"{key:>15}: {value}")


@click.command("eval")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--base", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="BASE.gguf",
              help="Also the KL divergence of MODEL from this model (e.g. the F16 that MODEL was quantized from).")
@click.option("--save-base-logits", "save_logits", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE", help="Save MODEL's log-probabilities to FILE for later --base-logits runs "
              "(llama-perplexity --kl-divergence-base; the file reads in both).")
@click.option("--base-logits", "base_logits", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE", help="KL divergence from the base whose log-probabilities FILE holds "
              "(saved with --save-base-logits, or by llama-perplexity): the base is not run again.")
@text_options
@ctx_option("Tokens per chunk; the second half of each chunk is scored (llama-perplexity's -c).")
@click.option("--batch", "n_batch", type=click.IntRange(min=1), default=2048,
              help="Tokens per decode: batch / ctx chunks side by side (llama-perplexity's -b).")
@chunks_option()
@threads_option
@gpu_layers_option
@click.option("--rpc", default=None, envvar="LCPP_ZH_RPC", metavar="HOST:PORT[,HOST:PORT]",
              help="llama.cpp RPC workers to offload --gpu-layers to (split by their free memory).")
@json_option
@quiet_option
@click.pass_context
def eval_model(click_ctx: click.Context, model: Path, base: Path | None, save_logits: Path | None,
               base_logits: Path | None, text_file: Path | None, lang: str, n_ctx: int, n_batch: int,
               n_chunks: int | None, threads: int | None, gpu_layers: int, rpc: str | None, as_json: bool, quiet: bool) -> None:
    """Perplexity of MODEL.gguf over a text, computed as llama.cpp's llama-perplexity computes it; with
    --base, the KL-divergence statistics of llama-perplexity --kl-divergence (mean KLD, percentiles,
    same top token, RMS Δp).

    \b
    Examples:
      lcpp-zh eval atom.Q4_K_M.gguf
      lcpp-zh eval atom.Q4_K_M.gguf --base atom.f16.gguf --json
      lcpp-zh eval model.gguf --text wiki.test.raw --ctx 512
      lcpp-zh eval atom.f16.gguf --save-base-logits atom.zh.logits
      lcpp-zh eval atom.Q4_K_M.gguf --base-logits atom.zh.logits
    """
    from click.core import ParameterSource

    from lcpp_zh.eval.measure.base_logits import open_base_logits
    from lcpp_zh.eval.measure.perplexity import EvalSettings, kl_divergence, perplexity, save_base_logits
    from lcpp_zh.eval.texts import load_text

    if sum(x is not None for x in (base, save_logits, base_logits)) > 1:
        raise click.UsageError("give one of --base, --base-logits and --save-base-logits")

    def given(name: str) -> bool:
        return click_ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)

    text, label = load_text(text_file, lang)
    if base_logits is not None:
        saved = open_base_logits(base_logits)
        # The file holds its tokens and context: the text and --ctx are only checked against it when given.
        n_ctx = n_ctx if given("n_ctx") else saved.n_ctx
        if not (given("text_file") or given("lang")):
            text, label = None, str((saved.meta or {}).get("text_label") or f"the tokens in {base_logits}")
    settings = EvalSettings(n_ctx=n_ctx, n_batch=n_batch, n_chunks=n_chunks, n_threads=threads, gpu_layers=gpu_layers,
                            rpc=rpc)
    with stage_progress(quiet or as_json) as progress:
        if save_logits is not None:
            result = save_base_logits(model, text, save_logits, settings, progress, text_label=label)
        elif base is not None or base_logits is not None:
            result = kl_divergence(model, base or base_logits, text, settings, progress)
        else:
            result = perplexity(model, text, settings, progress)
    out = result.as_dict()
    out["text"] = label
    if save_logits is not None:
        out["base_logits"] = str(save_logits)
    if as_json:
        click.echo(json.dumps(out, ensure_ascii=False, indent=2))
    else:
        _print_table(out, label if text is None else f"{label} ({len(text):,} characters)")


COMMANDS = [eval_model]
