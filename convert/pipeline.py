"""Convert a Hugging Face Llama checkpoint into a GGUF file, optionally quantized: the whole pipeline.

locate (local folder or hub) -> index tensors -> plan names and types -> write metadata, vocabulary and
tensor data streamed a block at a time to a temporary file -> rename; then llama.cpp's quantizer.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import gguf

from lcpp_zh.common.atomic import atomic_path, check_writable
from lcpp_zh.convert.chat_templates import BUILTIN_TEMPLATES, detect_template_name
from lcpp_zh.convert.checkpoint import Checkpoint, open_checkpoint
from lcpp_zh.convert.gguf_output import Progress, register_tensors, write_gguf
from lcpp_zh.convert.hparams import add_hparams
from lcpp_zh.convert.hub import locate_checkpoint
from lcpp_zh.convert.lora_merge import LoraMerge, prepare_merge
from lcpp_zh.convert.quantize import parse_quant_type, quantize_gguf
from lcpp_zh.convert.sampling import SAMPLING_CHOICES, add_recommended_sampling
from lcpp_zh.convert.tensor_plan import OUTTYPES, guess_file_type, plan_tensors
from lcpp_zh.convert.vocab import add_vocab
from lcpp_zh.errors import ConversionError, TemplateError

logger = logging.getLogger(__name__)

OUTTYPE_CHOICES = ("auto", *OUTTYPES)


def model_family(checkpoint: Checkpoint) -> str | None:
    """The built-in template family the checkpoint's names point to (FlagAlpha / Atom / Llama2-Chinese)."""
    return detect_template_name(checkpoint.config.get("_name_or_path"), checkpoint.directory.name,
                                checkpoint.display_name)


def choose_template(checkpoint: Checkpoint, template: str | None) -> str | None:
    """The Jinja template to embed when the checkpoint has none: by name, or recognised from the model's
    names (FlagAlpha / Atom / Llama2-Chinese ship no template); `none` embeds nothing."""
    if template == "none":
        return None
    if template is not None:
        if template not in BUILTIN_TEMPLATES:
            raise TemplateError(f"unknown template {template!r}; choose one of {', '.join(BUILTIN_TEMPLATES)}, none")
        return BUILTIN_TEMPLATES[template]
    name = model_family(checkpoint)
    return BUILTIN_TEMPLATES[name] if name else None


def _file_type(checkpoint: Checkpoint, outtype: str) -> gguf.LlamaFileType:
    if outtype == "auto":
        return guess_file_type(checkpoint.tensors)
    try:
        return OUTTYPES[outtype.lower()]
    except KeyError:
        raise ConversionError(f"unknown outtype {outtype!r}; choose one of {', '.join(OUTTYPE_CHOICES)}") from None


def _add_general_metadata(writer: gguf.GGUFWriter, checkpoint: Checkpoint, sampling: str = "auto") -> None:
    """general.* keys, from the model card and folder name, through gguf-py's Metadata as upstream does;
    general.sampling.* from generation_config.json the same way, or FlagAlpha's recommended settings."""
    total_params, shared, experts, expert_count = writer.get_total_parameter_count()
    metadata = gguf.Metadata.load(None, checkpoint.directory, None, total_params)
    if sampling == "auto":
        add_recommended_sampling(metadata, model_family(checkpoint))
    if checkpoint.display_name:
        metadata.name = checkpoint.display_name
    if metadata.name is None:
        metadata.name = checkpoint.directory.name
    if metadata.size_label is None and total_params > 0:
        metadata.size_label = gguf.size_label(total_params, shared, experts, expert_count)
    writer.add_type(gguf.GGUFType.MODEL)
    metadata.set_gguf_meta_model(writer)


def _check_free_space(destination: Path, needed: int) -> None:
    """Refuse before writing when the disk cannot hold the result (a 7B f16 file is 13 GiB)."""
    usage = shutil.disk_usage(destination.parent)
    if usage.total and usage.free < needed + (64 << 20):
        raise ConversionError(
            f"{destination.parent}: {needed / 2**30:.2f} GiB needed for {destination.name}, "
            f"only {usage.free / 2**30:.2f} GiB free"
        )


def write_model(checkpoint: Checkpoint, destination: Path, file_type: gguf.LlamaFileType,
                chat_template: str | None, replace_template: bool = False,
                progress: Progress | None = None, merge: LoraMerge | None = None, *, sampling: str = "auto") -> Path:
    """The checkpoint as one GGUF file of `file_type`, written atomically; with `merge`, the checkpoint as
    LoRA adapters change it (their deltas added row block by row block, their tokenizer if they bring one).
    `sampling`: "auto" adds FlagAlpha's recommended settings to an Atom / Llama2-Chinese checkpoint that has
    none, "checkpoint" writes only the checkpoint's own (llama.cpp's converter's output exactly)."""
    if merge is not None:
        checkpoint = merge.checkpoint
    tensors = plan_tensors(checkpoint.tensors, checkpoint.config, file_type)
    if merge is not None:
        merge.attach(tensors)
    _check_free_space(destination, sum(t.nbytes for t in tensors))
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    register_tensors(writer, tensors)
    _add_general_metadata(writer, checkpoint, sampling)
    add_hparams(writer, checkpoint.config, file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokenizer_dir = merge.tokenizer_dir if merge is not None else checkpoint.directory
    add_vocab(writer, tokenizer_dir, checkpoint.config["vocab_size"], chat_template, replace_template)
    with atomic_path(destination) as temporary:
        write_gguf(writer, tensors, temporary, progress)
    return destination


def convert_checkpoint(source: str | Path, destination: str | Path, *, outtype: str = "auto",
                       quant: str | None = None, template: str | None = None,
                       progress: Progress | None = None, loras: Sequence[tuple[str | Path, float]] = (),
                       sampling: str = "auto") -> Path:
    """Convert `source` (a model folder or hub repo id) to `destination`; with `quant`, the file written is
    the quantized model and the unquantized intermediate is removed; `loras` are (PEFT adapter folder, scale)
    pairs merged into the weights; `sampling` as write_model's. Returns the path written."""
    if sampling not in SAMPLING_CHOICES:
        raise ConversionError(f"unknown sampling {sampling!r}; choose one of {', '.join(SAMPLING_CHOICES)}")
    destination = Path(destination)
    check_writable(destination)
    quant_type = parse_quant_type(quant) if quant else None
    directory, repo_id = locate_checkpoint(source)
    checkpoint = open_checkpoint(directory, display_name=repo_id)
    merge = prepare_merge(checkpoint, loras) if loras else None  # every adapter checked before writing
    file_type = _file_type(checkpoint, outtype)
    chat_template = choose_template(checkpoint, template)
    replace = template not in (None, "none")
    if quant_type is None:
        return write_model(checkpoint, destination, file_type, chat_template, replace, progress, merge,
                           sampling=sampling)
    intermediate = destination.with_name(f".{destination.stem}.unquantized.gguf")
    try:
        write_model(checkpoint, intermediate, file_type, chat_template, replace, progress, merge, sampling=sampling)
        return quantize_gguf(intermediate, destination, quant_type)
    finally:
        intermediate.unlink(missing_ok=True)
