"""Runtime commands: chat, generate, templates (the model cache's commands live in models_cmds).

Thin: options are parsed here, then lcpp_zh.runtime.loader opens the engine and lcpp_zh.chat.repl / lcpp_zh.chat.generate
do the work. The model-loading and sampling options are shared decorators so every command spells them
the same way (serve may reuse `model_options` and `sampling_options`).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from lcpp_zh.cli.convert_cmds import QUANT_CHOICES
from lcpp_zh.cli.lora_cmds import pair_loras
from lcpp_zh.cli.progress import byte_progress
from lcpp_zh.common.sampling_defaults import SEED_SAMPLING as SEED
from lcpp_zh.resolve import DEFAULT_QUANT, INFER_DTYPES
from lcpp_zh.runtime.settings import (
    FLASH_ATTN_MODES,
    KV_CACHE_TYPES,
    SPEC_NGRAM_MODES,
    EngineSettings,
    ModelChoice,
)
from lcpp_zh.templates import AUTO, template_names

TEMPLATE_CHOICES = template_names()


def model_options(fn: Callable) -> Callable:
    """MODEL resolution and llama.cpp settings shared by chat, generate and serve."""
    options = [
        click.option("--quant", type=QUANT_CHOICES, default=DEFAULT_QUANT, metavar="TYPE",
                     help="Quantization when MODEL is a Hugging Face folder or repo id (see `lcpp-zh quantize -h`)."),
        click.option("--infer_dtype", "--infer-dtype", "infer_dtype", type=click.Choice(list(INFER_DTYPES)),
                     default=None, help="The seed's flag: int4, int8, float16 (= Q4_K_M, Q8_0, F16); wins over --quant."),
        click.option("--template", default=AUTO, envvar="LCPP_ZH_TEMPLATE",
                     help=f"Chat format: {', '.join(TEMPLATE_CHOICES)}; auto: the GGUF's own template, else by "
                          "model name."),
        click.option("--template-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                     help="A Jinja chat template (Hugging Face convention) to use instead."),
        click.option("--ctx", "n_ctx", type=int, default=EngineSettings.n_ctx, envvar="LCPP_ZH_CTX",
                     help="Context size in tokens."),
        click.option("--threads", type=click.IntRange(min=1), default=None, envvar="LCPP_ZH_THREADS",
                     help="CPU threads [default: physical cores]."),
        click.option("--gpu-layers", default=EngineSettings.gpu_layers, envvar="LCPP_ZH_GPU_LAYERS",
                     help="Layers on the GPU: auto (as many as fit), all, or a number; 0 = CPU only."),
        click.option("--gpus", default=None, envvar="LCPP_ZH_GPUS",
                     help="Devices to use by index or name, e.g. 0,1 or CUDA0,RPC0 (`lcpp-zh devices` lists them) "
                          "[default: all]."),
        click.option("--main-gpu", type=int, default=None, help="GPU for scratch buffers and small tensors."),
        click.option("--rpc", default=None, envvar="LCPP_ZH_RPC", metavar="HOST:PORT[,HOST:PORT]",
                     help="llama.cpp RPC workers (`lcpp-zh worker`, ggml-rpc-server): layers are split over them and "
                          "the local devices by free memory."),
        click.option("--tensor-split", default=None, metavar="P0,P1,...",
                     help="Override the automatic split: proportions per device, in the plan's order (llama-server's "
                          "format)."),
        click.option("--lora", "loras", multiple=True, metavar="ADAPTER.gguf",
                     help="GGUF LoRA adapter applied at runtime (repeatable; `lcpp-zh convert-lora` makes one)."),
        click.option("--lora-scale", "lora_scales", type=float, multiple=True, metavar="SCALE",
                     help="Scale of the --lora at the same position (default 1.0)."),
        click.option("--cache-type-k", type=click.Choice(KV_CACHE_TYPES), default=EngineSettings.cache_type_k,
                     help="KV cache type of K cells; q8_0 halves the KV's memory (llama.cpp's --cache-type-k)."),
        click.option("--cache-type-v", type=click.Choice(KV_CACHE_TYPES), default=EngineSettings.cache_type_v,
                     help="KV cache type of V cells; a quantized one needs flash attention (auto or on)."),
        click.option("--flash-attn", type=click.Choice(FLASH_ATTN_MODES), default=EngineSettings.flash_attn,
                     help="Flash attention; auto: where the device supports it."),
        click.option("--cache-ram", "cache_ram_mb", type=click.IntRange(min=0), default=EngineSettings.cache_ram_mb,
                     metavar="MB", help="Host RAM for the KV of idle conversations, restored when they come back "
                                        "(at most a quarter of the free memory); 0 = off."),
        click.option("--spec-ngram", type=click.Choice(SPEC_NGRAM_MODES), default=EngineSettings.spec_ngram,
                     envvar="LCPP_ZH_SPEC_NGRAM", help="Speculative decoding from the prompt and answer's own text "
                     "(same output, faster copying); auto: only in answers where the guesses hold."),
        click.option("--draft", "--draft-model", "draft_model", default=EngineSettings.draft_model, metavar="DRAFT.gguf",
                     type=click.Path(exists=True, dir_okay=False), help="A small model with the same vocabulary "
                     "that guesses tokens for the model to check (speculative decoding; same output)."),
        click.option("--draft-max", type=click.IntRange(min=1), default=EngineSettings.draft_max,
                     help="Most tokens guessed per step (speculative decoding)."),
        click.option("--draft-min", type=click.IntRange(min=1), default=EngineSettings.draft_min,
                     help="Fewest guessed tokens worth checking (speculative decoding)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def sampling_options(fn: Callable) -> Callable:
    """Sampling flags; defaults are the model's own (GGUF general.sampling.*), else the seed's Chinese Llama 2
    settings (one table, lcpp_zh.common.sampling_defaults)."""
    options = [
        click.option("--temperature", type=click.FloatRange(min=0), default=SEED.temperature,
                     help="0 = greedy. Sampling options left out take the model's own values when its GGUF has "
                          "them (general.sampling.*), else these defaults."),
        click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=SEED.top_p,
                     help="Nucleus sampling."),
        click.option("--top-k", type=click.IntRange(min=0), default=SEED.top_k, help="0 disables it."),
        click.option("--min-p", type=click.FloatRange(0, 1), default=SEED.min_p,
                     help="Minimum relative probability."),
        click.option("--repeat-penalty", "--repetition-penalty", "repeat_penalty", type=click.FloatRange(min=0, min_open=True),
                     default=SEED.repeat_penalty, help="Repetition penalty (1 = off)."),
        click.option("--repeat-last-n", type=click.IntRange(min=-1), default=SEED.repeat_last_n,
                     help="Tokens the repetition penalty looks back over (-1 = all)."),
        click.option("--presence-penalty", type=float, default=SEED.presence_penalty, help="OpenAI-style presence penalty."),
        click.option("--frequency-penalty", type=float, default=SEED.frequency_penalty, help="OpenAI-style frequency penalty."),
        click.option("--seed", type=int, default=None, help="Random seed [default: random]."),
        click.option("--max-new-tokens", "--max-tokens", "max_tokens", type=click.IntRange(min=1), default=SEED.max_tokens,
                     help="Most tokens to generate."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "repeat_last_n",
                  "presence_penalty", "frequency_penalty", "seed", "max_tokens")


def _explicit_sampling() -> set[str]:
    """The sampling options the user gave (the others may take the GGUF's own general.sampling.* values)."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return {k for k in _SAMPLING_KEYS
            if ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)}


def _model_sampling(params, engine, explicit: set[str]):
    """The model's own sampling settings (GGUF general.sampling.*) for every option left at its default."""
    from lcpp_zh.runtime.gguf_defaults import apply_model_defaults

    return apply_model_defaults(params, getattr(engine, "metadata", None) or {}, explicit)


def parse_model_options(kwargs: dict, *, model_source: str | None = None,
                        **engine: Any) -> tuple[ModelChoice, EngineSettings, Any]:
    """Pop `model_options`' values (and `model`, when there) from a command's kwargs: the model choice, the
    engine settings (`engine` adds the command's own, like serve's n_parallel) and the chat template, which
    is checked now, before any model loads (lcpp_zh.templates.choose_template)."""
    from lcpp_zh.templates import choose_template

    name = kwargs.pop("template")
    template = choose_template(name, kwargs.pop("template_file"), model_source)
    # A checkpoint is converted with the named format (--template, else --model_source's), never a file's.
    conversion = name if name and name != AUTO else template if isinstance(template, str) else None
    choice = ModelChoice(name=kwargs.pop("model", ""), quant=kwargs.pop("quant"), infer_dtype=kwargs.pop("infer_dtype"),
                         template=conversion)
    settings = EngineSettings(n_ctx=kwargs.pop("n_ctx"), n_threads=kwargs.pop("threads"),
                              gpu_layers=kwargs.pop("gpu_layers"), gpus=kwargs.pop("gpus"),
                              main_gpu=kwargs.pop("main_gpu"), rpc=kwargs.pop("rpc"),
                              tensor_split=kwargs.pop("tensor_split"),
                              loras=tuple(pair_loras(kwargs.pop("loras"), kwargs.pop("lora_scales"))),
                              cache_type_k=kwargs.pop("cache_type_k"), cache_type_v=kwargs.pop("cache_type_v"),
                              flash_attn=kwargs.pop("flash_attn"), cache_ram_mb=kwargs.pop("cache_ram_mb"),
                              spec_ngram=kwargs.pop("spec_ngram"), draft_model=kwargs.pop("draft_model"),
                              draft_max=kwargs.pop("draft_max"), draft_min=kwargs.pop("draft_min"), **engine)
    return choice, settings, template


def _split_kwargs(kwargs: dict):
    from lcpp_zh.runtime.sampling import SamplingParams

    params = SamplingParams(**{k: kwargs.pop(k) for k in _SAMPLING_KEYS})
    choice, settings, template = parse_model_options(kwargs)
    return choice, settings, params, template


def _open(choice: ModelChoice, settings: EngineSettings, quiet: bool = False):
    """Load the engine; returns it with its offload plan, which goes to stderr in one line unless quiet
    (--json). A progress bar appears only when MODEL has to be converted first."""
    from lcpp_zh.runtime.loader import open_engine

    report = (lambda _msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    with contextlib.ExitStack() as stack:
        bar: list = []

        def progress(done: int, total: int) -> None:
            if not bar:
                bar.append(stack.enter_context(byte_progress("converting", quiet or not sys.stderr.isatty())))
            if bar[0] is not None:
                bar[0](done, total)

        return open_engine(choice, settings, report=report, progress=progress)


@click.command("chat")
@click.argument("model")
@model_options
@sampling_options
@click.option("--system", default=None, help="System prompt.")
def chat(system: str | None, **kwargs) -> None:
    """Talk to MODEL in the terminal, answers streamed as they come.

    MODEL is a .gguf file, a Hugging Face folder or a hub repo id (converted once, then cached).
    Type /help in the chat for its commands. Piped stdin works too: each line is a message.

    \b
    Examples:
      lcpp-zh chat atom-7b-chat.Q4_K_M.gguf
      lcpp-zh chat FlagAlpha/Atom-7B-Chat --infer_dtype int4 --gpu-layers auto
      echo "用一句话介绍北京" | lcpp-zh chat atom.gguf
    """
    from lcpp_zh.chat.repl import Terminal, repl
    from lcpp_zh.chat.session import ChatSession
    from lcpp_zh.resolve import cache_dir

    choice, settings, params, template = _split_kwargs(kwargs)
    explicit = _explicit_sampling()
    engine, _plan = _open(choice, settings)
    params = _model_sampling(params, engine, explicit)
    try:
        session = ChatSession(engine, template=template, system=system, params=params)
        repl(session, Terminal(history_path=cache_dir() / "chat_history"))
    finally:
        engine.close()


@click.command("generate")
@click.argument("model")
@click.argument("prompt")
@model_options
@sampling_options
@click.option("--system", default=None, help="System prompt.")
@click.option("--raw", is_flag=True, help="Send PROMPT as is, without the chat template.")
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: text, token counts, timings.")
def generate(system: str | None, raw: bool, stop: tuple[str, ...], as_json: bool, **kwargs) -> None:
    """Answer PROMPT once with MODEL and exit (`-` reads PROMPT from stdin).

    \b
    Examples:
      lcpp-zh generate atom.Q4_K_M.gguf "介绍一下北京"
      lcpp-zh generate model.gguf "Once upon a time" --raw --max-new-tokens 64 --json
    """
    from lcpp_zh.chat.generate import generate as run_generate

    prompt = kwargs.pop("prompt")
    choice, settings, params, template = _split_kwargs(kwargs)
    explicit = _explicit_sampling()
    if prompt == "-":
        prompt = sys.stdin.read()
    params = params.replace(stop=list(stop))
    engine, plan = _open(choice, settings, quiet=as_json)
    params = _model_sampling(params, engine, explicit)
    try:
        def echo(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        result = run_generate(engine, prompt, params, raw=raw, template=template, system=system,
                              on_text=None if as_json else echo)
    finally:
        engine.close()
    if as_json:
        click.echo(json.dumps({**result.as_dict(), "offload": plan.describe()}, ensure_ascii=False))
        return
    f = result.finished
    click.echo("")
    click.echo(f"{f.completion_tokens} tokens, {f.tokens_per_s:.1f} tokens/s, first token {f.ttft_s:.2f} s",
               err=True)


@click.command("templates")
@click.argument("name", required=False, type=click.Choice(TEMPLATE_CHOICES[1:]))
def templates(name: str | None) -> None:
    """List the built-in chat templates and show each rendering an example conversation.

    <s> and </s> stand for the BOS/EOS control tokens.
    """
    from lcpp_zh.templates import EXAMPLE_CONVERSATION, get_template

    for template_name in [name] if name else TEMPLATE_CHOICES[1:]:
        template = get_template(template_name)
        text = template.render_text(EXAMPLE_CONVERSATION, add_generation_prompt=True, bos_token="<s>", eos_token="</s>")
        click.echo(f"== {template_name} (stops: {', '.join(template.stops) or 'end of generation'})")
        click.echo(text)
        click.echo("")


COMMANDS: list[click.Command] = [chat, generate, templates]
