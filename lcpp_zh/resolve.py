"""Model resolution shared by chat, generate and serve: a MODEL argument -> a GGUF file on disk.

A `.gguf` path is used as is. A local Hugging Face folder, a Hugging Face repo id (owner/name) or a ModelScope
one (modelscope:owner/name) is converted and quantized once through lcpp_zh.convert and cached under the cache
directory (env LCPP_ZH_CACHE, else the platform's user cache folder: see cache_dir); later runs find the
cached file. The downloads themselves stay in each hub's own cache (HF_HOME, MODELSCOPE_CACHE). No llama.cpp
import here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from lcpp_zh.common.console import status
from lcpp_zh.errors import ModelError

logger = logging.getLogger(__name__)

DEFAULT_QUANT = "Q4_K_M"
# The seed's --infer_dtype values and the llama.cpp file types that play their part.
INFER_DTYPES = {"int4": "Q4_K_M", "int8": "Q8_0", "float16": "F16"}
_UNQUANTIZED = {"F32", "F16", "BF16"}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# The prefix of ModelScope repo ids (lcpp_zh.convert.modelscope downloads them).
MODELSCOPE_PREFIX = "modelscope:"


def cache_dir() -> Path:
    """$LCPP_ZH_CACHE, else the platform's convention: $XDG_CACHE_HOME/lcpp-zh or ~/.cache/lcpp-zh on Linux,
    ~/Library/Caches/lcpp-zh on macOS, %LOCALAPPDATA%\\lcpp-zh\\Cache on Windows."""
    if os.environ.get("LCPP_ZH_CACHE"):
        return Path(os.environ["LCPP_ZH_CACHE"]).expanduser()
    # appauthor=False: no vendor folder level on Windows (platformdirs would repeat the app name).
    return Path(platformdirs.user_cache_dir("lcpp-zh", appauthor=False))


def models_dir() -> Path:
    return cache_dir() / "models"


def quant_for(quant: str | None, infer_dtype: str | None) -> str:
    """The file type to convert to: --infer_dtype wins when given (the seed's flag), else --quant."""
    if infer_dtype:
        try:
            return INFER_DTYPES[infer_dtype]
        except KeyError:
            raise ModelError(f"unknown --infer_dtype {infer_dtype!r}; choose one of {', '.join(INFER_DTYPES)}") from None
    return (quant or DEFAULT_QUANT).upper()


def _name_key(name: str) -> str:
    """A repo id as a file name: FlagAlpha/Atom-7B-Chat -> FlagAlpha--Atom-7B-Chat,
    modelscope:FlagAlpha/Atom-7B-Chat -> modelscope--FlagAlpha--Atom-7B-Chat (its own cache entry)."""
    return name.replace(":", "--").replace("/", "--")


def cache_name(source: str, quant: str) -> str:
    """File name of the cached GGUF: repo ids by name, local folders by name plus a hash of their path."""
    path = Path(source).expanduser()
    if path.exists():
        digest = hashlib.sha256(str(path.resolve()).encode("utf-8")).hexdigest()[:8]
        stem = f"{path.resolve().name}-{digest}"
    else:
        stem = _name_key(source)
    return f"{stem}.{quant.upper()}.gguf"


def _check_source(source: str, path: Path) -> None:
    """A MODEL that is neither a .gguf file nor convertible is an error saying which forms are accepted."""
    if source.lower().endswith(".gguf"):
        raise ModelError(f"{source}: no such model file")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{source}: not a Hugging Face model folder (no config.json) and not a .gguf file")
        return
    if source.startswith(MODELSCOPE_PREFIX):
        if not _REPO_ID.match(source[len(MODELSCOPE_PREFIX):]):
            raise ModelError(f"{source}: a ModelScope model is named modelscope:owner/name "
                             "(e.g. modelscope:FlagAlpha/Atom-7B-Chat)")
        return
    if not _REPO_ID.match(source):
        raise ModelError(f"{source}: no such file or folder, and not a hub repo id "
                         "(owner/name on Hugging Face, modelscope:owner/name on ModelScope)")


def resolve_model(name_or_path: str | os.PathLike, quant: str | None = DEFAULT_QUANT, *,
                  infer_dtype: str | None = None, template: str | None = None,
                  progress: Callable | None = None) -> Path:
    """The GGUF file for MODEL, converting a Hugging Face folder or repo id on first use."""
    source = str(name_or_path)
    path = Path(source).expanduser()
    if path.is_file():
        return path
    _check_source(source, path)
    qtype = quant_for(quant, infer_dtype)
    target = models_dir() / cache_name(source, qtype)
    if target.is_file():
        logger.info("using cached %s", target)
        return target
    return _convert(source, target, qtype, template, progress)


def _convert(source: str, target: Path, qtype: str, template: str | None, progress: Callable | None) -> Path:
    from lcpp_zh.convert.pipeline import convert_checkpoint

    target.parent.mkdir(parents=True, exist_ok=True)
    status(logger, "converting %s to %s (first use only)", source, target.name)
    if qtype in _UNQUANTIZED:
        return convert_checkpoint(source, target, outtype=qtype.lower(), template=template, progress=progress)
    return convert_checkpoint(source, target, quant=qtype, template=template, progress=progress)


@dataclass(frozen=True)
class CachedModel:
    name: str
    path: Path
    size: int
    quant: str | None = None  # from the file name (the cache names files NAME.QUANT.gguf)


# The quantization a file name ends with: atom.Q4_K_M.gguf, SmolLM2-135M-Instruct-Q4_1.gguf, x.f16.gguf.
_QUANT_SUFFIX = re.compile(r"[._-]((?:I?Q\d\w*)|BF16|F16|F32)$", re.IGNORECASE)
# Parts 2.. of a split GGUF (llama.cpp's gguf-split names): only the first part is loadable.
_LATER_SHARD = re.compile(r"-(\d{5})-of-\d{5}$")


def quant_of(file_name: str) -> str | None:
    match = _QUANT_SUFFIX.search(file_name.removesuffix(".gguf"))
    return match.group(1).upper() if match else None


def gguf_files(folder: Path) -> list[CachedModel]:
    """The loadable .gguf files directly in `folder` (a stat each, no reading): hidden files (conversions
    in progress) and split parts after the first are left out."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.gguf")):
        shard = _LATER_SHARD.search(path.stem)
        if path.name.startswith(".") or (shard and shard.group(1) != "00001"):
            continue
        try:
            if path.is_file():
                found.append(CachedModel(path.name, path, path.stat().st_size, quant_of(path.name)))
        except OSError:  # removed or unreadable between the listing and the stat
            continue
    return found


def list_models() -> list[CachedModel]:
    """The converted models in the cache, by name."""
    return gguf_files(models_dir())


def find_cached(name: str) -> list[CachedModel]:
    """The cached models NAME means: a file name, a model's name (all its quantizations), a repo id, or a path
    to a file in the cache. A path anywhere else is refused: only the cache's own files are ever matched."""
    path = Path(name).expanduser()
    if path.exists() or path.is_absolute() or name.startswith("."):
        # abspath, not resolve: a link in the cache is the cache's file even when it points elsewhere.
        if Path(os.path.abspath(path)).parent != Path(os.path.abspath(models_dir())):
            raise ModelError(f"{name}: not in the model cache ({models_dir()}); only cached models are removed")
        name = path.name
    wanted = _name_key(name)
    matches = [m for m in list_models() if wanted in _names_of(m.name)]
    if not matches:
        raise ModelError(f"{name}: no such cached model; `lcpp-zh list` lists them")
    return matches


def remove_model(name: str) -> list[Path]:
    """Delete cached models matching NAME (see find_cached)."""
    matches = [m.path for m in find_cached(name)]
    for path in matches:
        path.unlink()
    return matches


def _names_of(file_name: str) -> set[str]:
    """Names a cached file answers to: its file name, stem, model key (no quant), local folder name."""
    stem = file_name.removesuffix(".gguf")
    key = stem.rsplit(".", 1)[0]
    names = {file_name, stem, key}
    folder, _, digest = key.rpartition("-")
    if folder and re.fullmatch(r"[0-9a-f]{8}", digest):
        names.add(folder)
    return names
