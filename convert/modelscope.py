"""ModelScope (modelscope.cn) as a checkpoint source: `modelscope:owner/name`, for users in mainland China
where Hugging Face is often out of reach. FlagAlpha publishes Atom-7B and Atom-7B-Chat there too.

Files come through the modelscope package's own snapshot_download (the optional `modelscope` extra), only
those conversion needs, into modelscope's own cache (it honours MODELSCOPE_CACHE). This module has no network
code of its own and imports modelscope only when a `modelscope:` source is used.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

from lcpp_zh.errors import CheckpointError

logger = logging.getLogger(__name__)

PREFIX = "modelscope:"
INSTALL_HINT = "pip install 'lcpp-zh[modelscope]'"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# The small files conversion reads, as for a Hugging Face download (convert/hub.py): config, tokenizer,
# generation settings, the shard indexes; ModelScope's own configuration.json comes along with *.json.
_SMALL = ["*.json", "tokenizer.model", "*.jinja", "README.md"]
# Sharded weights, found through the index the small download brought; the converter reads either kind.
_INDEXES = {"model.safetensors.index.json": "model*.safetensors", "pytorch_model.bin.index.json": "pytorch_model*.bin"}
# Unsharded weights, tried in this order: safetensors first, as the converter prefers them.
_SINGLE_FILES = ["model.safetensors", "pytorch_model.bin"]


def is_modelscope(source: str) -> bool:
    return str(source).startswith(PREFIX)


def modelscope_repo(source: str) -> str:
    """`owner/name` of a `modelscope:owner/name` source; a malformed one is an error that shows the form."""
    repo_id = str(source)[len(PREFIX):]
    if not _REPO_ID.match(repo_id):
        raise CheckpointError(f"{source}: a ModelScope model is named modelscope:owner/name "
                              "(e.g. modelscope:FlagAlpha/Atom-7B-Chat)")
    return repo_id


def _snapshot_download() -> Callable[..., str]:
    try:
        from modelscope import snapshot_download
    except ImportError:
        raise CheckpointError(f"downloading from ModelScope needs the modelscope package: {INSTALL_HINT}") from None
    return snapshot_download


def _fetch(download: Callable[..., str], repo_id: str, patterns: list[str]) -> Path:
    """One snapshot_download call; its many kinds of failure (HTTP, unknown repo, disk) become one line."""
    try:
        return Path(download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - modelscope raises requests, OS and its own errors alike
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(
            f"{PREFIX}{repo_id}: download from ModelScope failed ({first}); check the name on modelscope.cn, "
            "or use the Hugging Face id, with HF_ENDPOINT=https://hf-mirror.com where huggingface.co is out of reach"
        ) from None


def _weights_present(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))


def download_modelscope(source: str) -> Path:
    """The local folder of `modelscope:owner/name` with what converting it needs; files already in
    modelscope's cache are not downloaded again."""
    repo_id = modelscope_repo(source)
    download = _snapshot_download()
    logger.info("downloading %s%s from ModelScope (config and tokenizer)", PREFIX, repo_id)
    folder = _fetch(download, repo_id, _SMALL)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{source}: the ModelScope repository has no config.json; "
                              "is it a Hugging Face-format Llama checkpoint?")
    folder = _download_weights(download, repo_id, folder)
    _check_shards(folder)
    return folder


def _download_weights(download: Callable[..., str], repo_id: str, folder: Path) -> Path:
    """The shards the index names, else the single weights file (safetensors first, then .bin)."""
    sharded = [pattern for index, pattern in _INDEXES.items() if (folder / index).is_file()]
    attempts = [[sharded[0]]] if sharded else [[name] for name in _SINGLE_FILES]
    failure: CheckpointError | None = None
    for patterns in attempts:
        logger.info("downloading %s%s from ModelScope (%s)", PREFIX, repo_id, ", ".join(patterns))
        try:
            folder = _fetch(download, repo_id, _SMALL + patterns)
        except CheckpointError as exc:  # a pattern that matches no file may be refused: try the next one
            failure = exc
            continue
        if _weights_present(folder):
            return folder
    raise failure or CheckpointError(
        f"{PREFIX}{repo_id}: no weights on ModelScope (expected {' or '.join(_SINGLE_FILES)}, "
        f"or shards listed in {' or '.join(_INDEXES)})")


def _check_shards(folder: Path) -> None:
    """Every shard the index names is there (an interrupted download leaves some out)."""
    for index in _INDEXES:
        path = folder / index
        if path.is_file():
            shards = set(json.loads(path.read_text(encoding="utf-8")).get("weight_map", {}).values())
            missing = sorted(s for s in shards if not (folder / s).is_file())
            if missing:
                raise CheckpointError(f"{folder}: shards missing after the ModelScope download: "
                                      f"{', '.join(missing[:3])}; run the command again to resume")
            return
