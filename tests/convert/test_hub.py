"""Hub repo ids as conversion sources, through huggingface_hub's own cache in offline mode.

The network is closed here, so the test lays out a hub cache folder (models--owner--name/snapshots/<rev>)
exactly as huggingface_hub writes it and converts by repo id with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import gguf

from lcpp_zh.convert.chat_templates import BUILTIN_TEMPLATES
from lcpp_zh.convert.hub import is_repo_id

REVISION = "0123456789abcdef0123456789abcdef01234567"


def make_hub_cache(root: Path, repo_id: str, checkpoint: Path) -> Path:
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    shutil.copytree(checkpoint, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


def test_repo_id_converts_from_the_offline_hub_cache(tiny_zh_hf, tmp_path, run_cli):
    hub = tmp_path / "hub"
    make_hub_cache(hub, "FlagAlpha/Atom-7B-Chat", tiny_zh_hf)
    out = tmp_path / "atom.gguf"
    result = run_cli("convert", "FlagAlpha/Atom-7B-Chat", "-o", out, "--outtype", "f16", "--quiet",
                     env={"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    reader = gguf.GGUFReader(out)
    assert reader.get_field("general.name").contents() == "FlagAlpha/Atom-7B-Chat"
    assert reader.get_field("tokenizer.chat_template").contents() == BUILTIN_TEMPLATES["llama2-chinese"]


def test_uncached_repo_id_offline_is_a_one_line_error(tmp_path, run_cli):
    result = run_cli("convert", "FlagAlpha/Not-There", "-o", tmp_path / "x.gguf",
                     env={"HF_HUB_CACHE": str(tmp_path / "empty-hub"), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1
    assert result.stderr.startswith("error: FlagAlpha/Not-There:"), result.stderr
    assert "HF_ENDPOINT" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.glob("*.gguf")) == []


def test_repo_id_recognition(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_repo_id("FlagAlpha/Atom-7B-Chat")
    assert not is_repo_id("./models/atom")
    assert not is_repo_id("/abs/path")
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "model").mkdir()
    assert not is_repo_id("local/model")  # an existing folder wins over a repo id
