"""`modelscope:owner/name` sources, with a local fake of the modelscope package's snapshot_download.

The network is closed here, so a stand-in `modelscope` package (written by the test, put first on the path)
serves a "remote" folder: it copies the files matching allow_patterns into $MODELSCOPE_CACHE/models/owner/name,
as modelscope lays out its cache, and logs every call. Everything else is real: the CLI, the converter, the
conversion cache and the GGUF written.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import gguf
import pytest

from lcpp_zh import resolve
from lcpp_zh.convert.chat_templates import BUILTIN_TEMPLATES
from lcpp_zh.convert.modelscope import INSTALL_HINT, download_modelscope
from lcpp_zh.errors import CheckpointError, ModelError
from lcpp_zh.resolve import list_models, remove_model, resolve_model

REPO = "FlagAlpha/Atom-7B-Chat"
FAKE_MODELSCOPE = '''
"""Test stand-in for the modelscope package: snapshot_download from a local "remote" folder."""
import fnmatch, json, os, shutil
from pathlib import Path


def snapshot_download(model_id, revision=None, cache_dir=None, allow_patterns=None, ignore_patterns=None,
                      local_dir=None, **kwargs):
    with open(os.environ["FAKE_MODELSCOPE_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps({"model_id": model_id, "allow_patterns": allow_patterns, "cache_dir": cache_dir,
                              "local_dir": local_dir}) + "\\n")
    remote = Path(os.environ["FAKE_MODELSCOPE_REMOTE"]) / model_id
    if not remote.is_dir():
        raise ValueError(f"The request model: {model_id} does not exist!")
    root = Path(cache_dir or os.environ.get("MODELSCOPE_CACHE") or Path.home() / ".cache" / "modelscope" / "hub")
    folder = Path(local_dir) if local_dir else root / "models" / model_id
    folder.mkdir(parents=True, exist_ok=True)
    for path in remote.iterdir():
        if allow_patterns is None or any(fnmatch.fnmatch(path.name, p) for p in allow_patterns):
            shutil.copy(path, folder / path.name)
    return str(folder)
'''


@pytest.fixture
def fake_hub(tmp_path, monkeypatch, tiny_zh_hf):
    """The fake package on sys.path (and PYTHONPATH for the CLI), a remote holding the tiny Chinese Llama
    plus files conversion does not need, and MODELSCOPE_CACHE; returns (remote repo folder, call log)."""
    package = tmp_path / "fake-modelscope"
    (package / "modelscope").mkdir(parents=True)
    (package / "modelscope" / "__init__.py").write_text(FAKE_MODELSCOPE, encoding="utf-8")
    remote = tmp_path / "remote"
    repo = remote / REPO
    shutil.copytree(tiny_zh_hf, repo)
    (repo / "configuration.json").write_text('{"framework": "pytorch", "task": "chat"}', encoding="utf-8")
    (repo / "optimizer.pt").write_bytes(b"not needed")
    (repo / "pytorch_model.bin").write_bytes(b"a second copy of the weights: not needed")
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_MODELSCOPE_REMOTE", str(remote))
    monkeypatch.setenv("FAKE_MODELSCOPE_LOG", str(log))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms-cache"))
    monkeypatch.setenv("PYTHONPATH", str(package))
    monkeypatch.syspath_prepend(str(package))
    monkeypatch.delitem(sys.modules, "modelscope", raising=False)
    return repo, log


def calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.is_file() else []


def test_convert_downloads_only_what_conversion_needs(fake_hub, tmp_path, run_cli):
    repo, log = fake_hub
    out = tmp_path / "atom.gguf"
    result = run_cli("convert", f"modelscope:{REPO}", "-o", out, "--outtype", "f16", "--quiet")
    assert result.returncode == 0, result.stderr
    reader = gguf.GGUFReader(out)
    assert reader.get_field("general.name").contents() == REPO
    # Recognised as FlagAlpha's Atom as from Hugging Face: its Human/Assistant template is embedded.
    assert reader.get_field("tokenizer.chat_template").contents() == BUILTIN_TEMPLATES["llama2-chinese"]
    downloaded = tmp_path / "ms-cache" / "models" / REPO
    assert (downloaded / "model.safetensors").is_file() and (downloaded / "tokenizer.model").is_file()
    assert not (downloaded / "optimizer.pt").exists() and not (downloaded / "pytorch_model.bin").exists()
    made = calls(log)
    assert {c["model_id"] for c in made} == {REPO}
    assert all(c["cache_dir"] is None and c["local_dir"] is None for c in made)  # MODELSCOPE_CACHE decides
    assert "*.safetensors" not in made[0]["allow_patterns"]  # config and tokenizer first, weights after


def test_sharded_bin_checkpoint(tmp_path, monkeypatch, fake_hub, tiny_zh_hf):
    from fixtures.tiny_llama import TinySpec, build_tiny_llama

    repo, log = fake_hub
    shutil.rmtree(repo)
    shutil.copytree(build_tiny_llama(TinySpec(weights="bin-sharded")), repo)
    folder = download_modelscope(f"modelscope:{REPO}")
    index = json.loads((folder / "pytorch_model.bin.index.json").read_text(encoding="utf-8"))
    assert all((folder / shard).is_file() for shard in set(index["weight_map"].values()))
    assert calls(log)[-1]["allow_patterns"][-1] == "pytorch_model*.bin"
    (folder / sorted(set(index["weight_map"].values()))[0]).unlink()
    (repo / sorted(set(index["weight_map"].values()))[0]).unlink()  # the "remote" lost it too
    with pytest.raises(CheckpointError, match="shards missing"):
        download_modelscope(f"modelscope:{REPO}")


def test_chat_generate_and_serve_names_convert_once_into_the_cache(fake_hub, run_cli):
    repo, log = fake_hub
    path = resolve_model(f"modelscope:{REPO}", "F16")
    assert path == resolve.models_dir() / "modelscope--FlagAlpha--Atom-7B-Chat.F16.gguf"
    n_calls = len(calls(log))
    assert resolve_model(f"modelscope:{REPO}", "F16") == path and len(calls(log)) == n_calls  # cached
    assert [m.name for m in list_models()] == [path.name]
    listed = run_cli("models", "--json", env={"LCPP_ZH_CACHE": str(resolve.cache_dir())})
    assert path.name in listed.stdout, listed.stderr
    assert remove_model(f"modelscope:{REPO}") == [path] and not path.exists()


def test_missing_package_names_the_extra(tmp_path, monkeypatch, run_cli):
    monkeypatch.setitem(sys.modules, "modelscope", None)  # `import modelscope` fails as when not installed
    with pytest.raises(CheckpointError, match=r"lcpp-zh\[modelscope\]"):
        download_modelscope(f"modelscope:{REPO}")
    result = run_cli("convert", f"modelscope:{REPO}", "-o", tmp_path / "x.gguf",
                     env={"PYTHONPATH": str(tmp_path / "nothing-here")})
    if result.returncode == 0 or "modelscope package" not in result.stderr:
        pytest.skip("the modelscope package is installed here; the in-process check above covered the message")
    assert result.returncode == 1 and INSTALL_HINT in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_download_failure_is_one_line_and_leaves_nothing(fake_hub, tmp_path, run_cli):
    result = run_cli("convert", "modelscope:FlagAlpha/Not-There", "-o", tmp_path / "x.gguf")
    assert result.returncode == 1
    assert result.stderr.startswith("error: modelscope:FlagAlpha/Not-There: download from ModelScope failed (")
    assert "HF_ENDPOINT" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.glob("*.gguf")) == []


@pytest.mark.parametrize("name", ["modelscope:Atom-7B-Chat", "modelscope:", "modelscope:a/b/c"])
def test_malformed_names(name):
    with pytest.raises(ModelError, match="modelscope:owner/name"):
        resolve_model(name)
