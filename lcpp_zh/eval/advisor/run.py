"""`lcpp-zh quants`: which quantization of a model to run here. From an unquantized GGUF (or a Hugging Face
folder or repo id, converted to F16 first) quantize to a ladder of types, score each against the F16 on a text
(base log-probabilities computed once), time generation here, and pick the best quality that fits in memory.
The figures only: tables and plots are drawn by lcpp_zh.cli.quants_cmds and lcpp_zh.eval.advisor.plot.
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from lcpp_zh.common.console import status
from lcpp_zh.convert.quantize import QuantType, needs_imatrix, parse_quant_type, quantize_gguf
from lcpp_zh.errors import ConversionError, EngineError, LcppError, ModelError
from lcpp_zh.eval.advisor.pick import Candidate, Recommendation, format_size, recommend
from lcpp_zh.eval.measure.base_logits import model_fingerprint, open_base_logits, text_digest
from lcpp_zh.eval.measure.perplexity import EvalSettings, kl_divergence, save_base_logits

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # progress(stage, done, total)

# From 2.6 to 8.5 bits per weight; Q4_0 because ARM and some GPUs run it fastest. The IQ types are made with an
# importance matrix computed once from the base.
DEFAULT_LADDER = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_0", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0")
IMATRIX_LADDER = ("IQ2_M", "IQ3_XXS", "IQ3_M", "IQ4_XS")
UNQUANTIZED_FTYPES = {0: "F32", 1: "F16", 32: "BF16"}  # general.file_type values of llama_ftype
DEFAULT_KV_CTX = 4096
DEFAULT_OVERHEAD = 512 << 20  # llama.cpp's compute buffers and the process itself, beyond weights and KV
_REPO_ID = re.compile(r"^(modelscope:)?[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class AdvisorSettings:
    types: tuple[str, ...] | None = None  # None: the default ladder
    eval: EvalSettings = EvalSettings(n_ctx=512, n_chunks=20)
    memory: int | None = None  # bytes; None: this machine's available memory
    memory_label: str | None = None  # how the limit was given (e.g. "8GB")
    kv_ctx: int = DEFAULT_KV_CTX  # context the memory estimate reserves KV cells (f16) for
    overhead: int = DEFAULT_OVERHEAD
    keep: Path | None = None  # keep quantized files (and the F16, logits, matrix) here
    imatrix: Path | None = None  # a user's importance matrix
    calibration: str | None = None  # text to compute the matrix on
    imatrix_chunks: int | None = 64  # chunks of eval.n_ctx tokens the matrix is computed over (None: all)
    n_prompt: int = 64
    n_gen: int = 64


@dataclass
class QuantRow:
    """One line of the table: a quantization, or the unquantized base (`base` true)."""

    type: str
    size: int
    bpw: float
    n_params: int
    needed: int
    fits: bool
    base: bool = False
    imatrix: bool = False
    ppl: float | None = None
    ppl_error: float | None = None
    kld_mean: float | None = None
    kld_error: float | None = None
    same_top: float | None = None
    same_top_error: float | None = None
    pp_tok_s: float | None = None
    tg_tok_s: float | None = None
    path: str | None = None  # only when kept
    error: str | None = None
    kld: dict[str, object] | None = None


@dataclass
class AdvisorReport:
    model: str
    base_path: str
    text: str
    n_ctx: int
    chunks: int
    memory: int
    memory_label: str
    kv_ctx: int
    overhead: int
    rows: list[QuantRow] = field(default_factory=list)
    recommendation: Recommendation | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def resolve_types(names: tuple[str, ...] | None) -> list[QuantType]:
    """The types to try, checked before any heavy work: the default ladder, or the user's list."""
    if names is None:
        names = DEFAULT_LADDER + IMATRIX_LADDER
    types: list[QuantType] = []
    for name in names:
        quant = parse_quant_type(name.strip())
        if quant.value in UNQUANTIZED_FTYPES.values():
            raise ConversionError(f"{quant.value} is not a quantization: the table shows the base as its first row")
        if quant not in types:
            types.append(quant)
    if not types:
        raise ConversionError("--types names no type; e.g. --types Q4_K_M,Q5_K_M,Q8_0")
    return types


def uses_imatrix(quant: QuantType) -> bool:
    """The types quantized with the matrix: those llama.cpp refuses without one, and every IQ type."""
    return needs_imatrix(quant) or quant.value.startswith("IQ")


def model_label(model: str) -> str:
    """A short name for file names: atom-7b.f16.gguf -> atom-7b, FlagAlpha/Atom-7B -> Atom-7B."""
    name = Path(model.rstrip("/")).name.removeprefix("modelscope:")
    name = re.sub(r"\.gguf$", "", name, flags=re.IGNORECASE)
    return re.sub(r"[.-](f16|bf16|f32)$", "", name, flags=re.IGNORECASE) or "model"


def check_unquantized(path: Path) -> str:
    """The base's file type (F16, BF16, F32); a one-line error for anything else."""
    import gguf

    from lcpp_zh.runtime.llama_api import check_gguf_file

    check_gguf_file(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError) as exc:
        raise ModelError(f"{path}: corrupt or truncated GGUF ({exc})") from exc
    entry = reader.fields.get("general.file_type")
    ftype = int(entry.contents()) if entry is not None else None
    if ftype in UNQUANTIZED_FTYPES:
        return UNQUANTIZED_FTYPES[ftype]
    try:
        name = gguf.LlamaFileType(ftype).name.removeprefix("MOSTLY_") if ftype is not None else "quantized"
    except ValueError:
        name = f"file type {ftype}"
    raise ModelError(f"{path} is a {name} model; the advisor quantizes from the unquantized one: give its F16 GGUF, "
                     "Hugging Face folder or repo id")


def resolve_base(model: str, workdir: Path, progress: Progress | None) -> Path:
    """MODEL as an unquantized GGUF: a GGUF as is (checked), a folder or repo id converted to F16 in workdir."""
    path = Path(model).expanduser()
    if path.is_file():
        check_unquantized(path)
        return path
    if model.lower().endswith(".gguf"):
        raise ModelError(f"{model}: no such model file")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelError(f"{model}: not a Hugging Face model folder (no config.json) and not a .gguf file")
    if not path.is_dir() and not _REPO_ID.match(model):
        raise ModelError(f"{model}: no such file or folder, and not a hub repo id (owner/name)")
    from lcpp_zh.convert.pipeline import convert_checkpoint

    target = workdir / f"{model_label(model)}.F16.gguf"
    if target.is_file():  # a --keep folder of an earlier run
        status(logger, "using %s from an earlier run", target)
        return target

    def bytes_done(done: int, total: int) -> None:
        if progress:
            progress("convert", done, total)

    return Path(convert_checkpoint(model, target, outtype="f16", progress=bytes_done))


def weight_bits(path: Path) -> tuple[int, float]:
    """(parameters, bits per weight) as llama.cpp prints them: all tensor bytes * 8 / all tensor elements."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    n_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    n_elements = sum(int(t.n_elements) for t in reader.tensors)
    return n_elements, 8.0 * n_bytes / max(n_elements, 1)


def memory_needed(path: Path, kv_ctx: int, overhead: int) -> int:
    """Bytes to run `path` at a context of kv_ctx: the file, the KV cache (f16 cells) and the overhead."""
    from lcpp_zh.runtime.offload import read_model_sizes

    return path.stat().st_size + read_model_sizes(path).kv_bytes(kv_ctx) + overhead


@contextlib.contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        try:
            keep.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LcppError(f"--keep {keep}: cannot create it ({exc.strerror})") from None
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="lcpp-zh-quants-") as folder:
        yield Path(folder)


def run_advisor(model: str, text: str, text_label: str, settings: AdvisorSettings,
                progress: Progress | None = None) -> AdvisorReport:
    """Quantize, score and time each type; the report with its recommendation."""
    from lcpp_zh.common.system import available_memory

    types = resolve_types(settings.types)
    if settings.imatrix is not None and not settings.imatrix.is_file():
        raise LcppError(f"--imatrix {settings.imatrix}: no such file")
    limit, limit_label = settings.memory, settings.memory_label
    if limit is None:
        limit = available_memory()
        if limit is None:
            raise LcppError("cannot read this machine's available memory; give it with --memory 8GB")
        limit_label = f"{format_size(limit)} (available here)"
    ev = settings.eval
    with _workdir(settings.keep) as workdir:
        base = resolve_base(model, workdir, progress)
        label = model_label(model)
        logits = _base_logits(base, text, text_label, workdir, label, ev, progress)
        saved = open_base_logits(logits)
        # Generation needs a prompt of one token at least; nothing is timed when both are 0.
        prompt = saved.tokens[: max(settings.n_prompt, 1 if settings.n_gen else 0)]
        matrix = _importance_matrix(base, text, saved, types, settings, workdir, label, progress)
        report = AdvisorReport(model, str(base), text_label, ev.n_ctx, saved.n_chunks, limit, limit_label or
                               format_size(limit), settings.kv_ctx, settings.overhead)
        rows = []
        for index, quant in enumerate(types):
            if progress:
                progress("types", index, len(types))
            rows.append(_measure_type(base, quant, logits, prompt, matrix, settings, limit, workdir, label, progress))
        if progress:
            progress("types", len(types), len(types))
        report.rows = [_measure_base(base, rows, prompt, settings, limit, progress)] + sorted(rows, key=lambda r: r.size)
    measured = [Candidate(r.type, r.kld_mean, r.needed, r.size) for r in report.rows
                if not r.base and r.kld_mean is not None]
    report.recommendation = recommend(measured, limit, report.memory_label)
    return report


def _base_logits(base: Path, text: str, text_label: str, workdir: Path, label: str, ev: EvalSettings,
                 progress: Progress | None) -> Path:
    """The base's log-probabilities, computed once; a --keep folder's file is reused when it still matches."""
    path = workdir / f"{label}.base-c{ev.n_ctx}-n{ev.n_chunks or 'all'}.logits"
    if path.is_file():
        try:
            saved = open_base_logits(path)
            meta = saved.meta or {}
            if (meta.get("fingerprint") == model_fingerprint(base) and meta.get("text_sha256") == text_digest(text)
                    and saved.n_ctx == ev.n_ctx and (ev.n_chunks is None or saved.n_chunks >= ev.n_chunks)):
                status(logger, "reusing the base log-probabilities in %s", path)
                return path
        except LcppError:
            pass
    save_base_logits(base, text, path, ev, progress, text_label=text_label)
    return path


def _importance_matrix(base: Path, text: str, saved, types: list[QuantType], settings: AdvisorSettings,
                       workdir: Path, label: str, progress: Progress | None) -> Path | None:
    """The matrix the IQ types are made with: the user's, or computed once from the base."""
    if not any(uses_imatrix(t) for t in types):
        return None
    if settings.imatrix is not None:
        return settings.imatrix
    from lcpp_zh.eval.quantization.imatrix import compute_imatrix

    calibration = settings.calibration or _held_out_text(text, len(saved.tokens), saved.n_ctx * saved.n_chunks)
    path = workdir / f"{label}.imatrix.gguf"

    def chunks(done: int, total: int) -> None:
        if progress:
            progress("imatrix", done, total)

    matrix = compute_imatrix(base, calibration, n_ctx=settings.eval.n_ctx, n_chunks=settings.imatrix_chunks,
                             n_threads=settings.eval.n_threads, progress=chunks)
    matrix.save(path, "calibration text" if settings.calibration else "held-out part of the evaluation text")
    return path


def _held_out_text(text: str, n_tokens: int, n_scored_tokens: int) -> str:
    """The part of the evaluation text after the evaluated chunks (with a margin), so that the IQ types are not
    scored on the text their matrix was computed from; the built-in English text when too little is left."""
    from lcpp_zh.eval.texts import builtin_text

    start = int(len(text) * min(1.0, 1.1 * n_scored_tokens / max(n_tokens, 1)))
    rest = text[start:]
    return rest if len(rest) >= len(text) // 5 else builtin_text("en")


def _measure_type(base: Path, quant: QuantType, logits: Path, prompt: list[int], matrix: Path | None,
                  settings: AdvisorSettings, limit: int, workdir: Path, label: str,
                  progress: Progress | None) -> QuantRow:
    from lcpp_zh.eval.measure.speed import measure_speed

    path = workdir / f"{label}.{quant.value}.gguf"
    matrix = matrix if uses_imatrix(quant) else None
    ev = settings.eval

    def chunks(stage: str, done: int, total: int) -> None:
        if progress:
            progress(quant.value if stage == "model" else stage, done, total)

    try:
        quantize_gguf(base, path, quant, ev.n_threads, imatrix=matrix)
        n_params, bpw = weight_bits(path)
        needed = memory_needed(path, settings.kv_ctx, settings.overhead)
        row = QuantRow(quant.value, path.stat().st_size, bpw, n_params, needed, needed <= limit,
                       imatrix=matrix is not None, path=str(path) if settings.keep else None)
        result = kl_divergence(path, logits, None, ev, chunks)
        kld = result.kld or {}
        row = replace(row, ppl=result.ppl, ppl_error=result.ppl_error, kld_mean=kld.get("kld_mean"),
                      kld_error=kld.get("kld_error"), same_top=kld.get("same_top"),
                      same_top_error=kld.get("same_top_error"), kld=kld)
        if not prompt:
            return row
        speed = measure_speed(path, prompt, n_gen=settings.n_gen, n_threads=ev.n_threads, gpu_layers=ev.gpu_layers)
        return replace(row, **_speed_figures(speed, settings))
    except (ConversionError, EngineError) as exc:  # one type failing leaves the others' figures standing
        logger.warning("%s: %s", quant.value, exc)
        return QuantRow(quant.value, 0, 0.0, 0, 0, False, error=str(exc))
    finally:
        if settings.keep is None:
            path.unlink(missing_ok=True)


def _measure_base(base: Path, rows: list[QuantRow], prompt: list[int], settings: AdvisorSettings, limit: int,
                  progress: Progress | None) -> QuantRow:
    """The reference row: the base's size and perplexity (from the scored runs); its speed when it fits."""
    from lcpp_zh.eval.measure.speed import measure_speed

    n_params, bpw = weight_bits(base)
    needed = memory_needed(base, settings.kv_ctx, settings.overhead)
    row = QuantRow(check_unquantized(base), base.stat().st_size, bpw, n_params, needed, needed <= limit, base=True,
                   path=str(base), kld_mean=0.0, kld_error=0.0, same_top=1.0, same_top_error=0.0)
    scored = next((r.kld for r in rows if r.kld), None)
    if scored:
        row.ppl, row.ppl_error = float(scored["ppl_base"]), float(scored["ppl_base_error"])
    if row.fits and prompt:  # an F16 larger than the memory would only measure the swap
        if progress:
            progress("speed", 0, 1)
        ev = settings.eval
        speed = measure_speed(base, prompt, n_gen=settings.n_gen, n_threads=ev.n_threads, gpu_layers=ev.gpu_layers)
        row = replace(row, **_speed_figures(speed, settings))
    return row


def _speed_figures(speed, settings: AdvisorSettings) -> dict[str, float | None]:
    return {"pp_tok_s": speed.pp_tok_s if settings.n_prompt else None,
            "tg_tok_s": speed.tg_tok_s if settings.n_gen else None}
