"""Find a checkpoint: a local folder as is, or a Hugging Face hub repo id downloaded with only the files
conversion needs. huggingface_hub honours HF_ENDPOINT (a mirror, e.g. https://hf-mirror.com for users in
China), HF_TOKEN and HF_HUB_OFFLINE. `modelscope:owner/name` comes from ModelScope instead (modelscope.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

from lcpp_zh.convert import modelscope
from lcpp_zh.errors import CheckpointError

logger = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_ALWAYS = ["*.json", "tokenizer.model", "*.jinja", "README.md"]


def is_repo_id(text: str) -> bool:
    return bool(_REPO_ID.match(text)) and not Path(text).exists()


def locate_checkpoint(source: str | Path) -> tuple[Path, str | None]:
    """The local folder of a checkpoint and, for a hub download, its repo id (owner/name on either hub)."""
    if modelscope.is_modelscope(str(source)):
        return modelscope.download_modelscope(str(source)), modelscope.modelscope_repo(str(source))
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path}: expected a Hugging Face model folder, not a file")
        return path, None
    if is_repo_id(str(source)):
        return download_checkpoint(str(source)), str(source)
    raise CheckpointError(f"{source}: no such folder, and not a hub repo id (owner/name, or modelscope:owner/name)")


def _weight_patterns(repo_id: str) -> list[str]:
    """Safetensors when the repo has them, else PyTorch .bin shards, as the converter will read them."""
    from huggingface_hub import HfApi

    files = HfApi().list_repo_files(repo_id)
    if any(f.endswith(".safetensors") for f in files):
        return ["model*.safetensors"]
    return ["pytorch_model*.bin"]


def download_checkpoint(repo_id: str) -> Path:
    """Download (or find in the hub cache) what converting `repo_id` needs."""

    def patterns() -> list[str]:
        from huggingface_hub.constants import HF_HUB_OFFLINE

        weights = ["model*.safetensors", "pytorch_model*.bin"] if HF_HUB_OFFLINE else _weight_patterns(repo_id)
        logger.info("downloading %s (%s)", repo_id, ", ".join(weights))
        return _ALWAYS + weights

    return download_snapshot(repo_id, patterns, CheckpointError, "repository")


def download_snapshot(repo_id: str, patterns: Callable[[], list[str]] | list[str],
                      error: type[CheckpointError] = CheckpointError, what: str = "repository") -> Path:
    """snapshot_download of the files matching `patterns`, its failures as one-line `error`s."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        allowed = patterns() if callable(patterns) else patterns
        return Path(snapshot_download(repo_id, allow_patterns=allowed))
    except RepositoryNotFoundError:
        raise error(f"{repo_id}: no such {what} on the hub (or it is gated: set HF_TOKEN)") from None
    except LocalEntryNotFoundError:
        raise error(
            f"{repo_id}: not in the local hub cache and the hub cannot be reached "
            "(offline? set HF_ENDPOINT to a mirror such as https://hf-mirror.com)"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        raise error(f"{repo_id}: download failed ({str(exc).splitlines()[0]})") from None
