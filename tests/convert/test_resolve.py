"""Model resolution: a .gguf as is; a Hugging Face folder converted once into the cache (LCPP_ZH_CACHE, set
to a temporary folder by conftest) and found there the next time; `lcpp-zh models` lists and removes."""

from __future__ import annotations

import json

import gguf
import pytest

from lcpp_zh import resolve
from lcpp_zh.errors import ModelError
from lcpp_zh.resolve import list_models, quant_for, remove_model, resolve_model


def test_gguf_path_is_used_as_is(smollm2_gguf):
    assert resolve_model(smollm2_gguf) == smollm2_gguf


@pytest.mark.parametrize("name, message", [
    ("missing.gguf", "no such model file"),
    ("not a model", "not a hub repo id"),
])
def test_bad_names(name, message):
    with pytest.raises(ModelError, match=message):
        resolve_model(name)


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(tmp_path)


def test_infer_dtype_mapping():
    assert [quant_for(None, d) for d in ("int4", "int8", "float16")] == ["Q4_K_M", "Q8_0", "F16"]
    assert quant_for("q5_k_m", None) == "Q5_K_M"
    with pytest.raises(ModelError, match="infer_dtype"):
        quant_for(None, "int3")


def test_hf_folder_is_converted_once(tiny_zh_hf, monkeypatch):
    first = resolve_model(tiny_zh_hf, infer_dtype="int8")
    assert first.parent == resolve.models_dir() and first.name.endswith(".Q8_0.gguf")
    reader = gguf.GGUFReader(str(first))
    assert int(reader.fields["general.file_type"].contents()) == gguf.LlamaFileType.MOSTLY_Q8_0
    mtime = first.stat().st_mtime_ns

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted a second time")

    monkeypatch.setattr("lcpp_zh.convert.pipeline.convert_checkpoint", no_conversion)
    assert resolve_model(tiny_zh_hf, infer_dtype="int8") == first
    assert first.stat().st_mtime_ns == mtime
    assert [m.name for m in list_models()] == [first.name]


def test_models_command_lists_and_removes(run_cli, tiny_zh_hf):
    path = resolve_model(tiny_zh_hf, "F16")
    folder_name = tiny_zh_hf.resolve().name
    listed = run_cli("models", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)
    assert [(e["name"], e["size"]) for e in entries] == [(path.name, path.stat().st_size)]
    assert path.name in run_cli("models").stdout
    removed = run_cli("models", "rm", folder_name)
    assert removed.returncode == 0, removed.stderr
    assert not path.exists()
    missing = run_cli("models", "rm", folder_name)
    assert missing.returncode == 1 and missing.stderr.startswith("error: ")


def test_remove_by_file_name(tiny_zh_hf):
    path = resolve_model(tiny_zh_hf, "F16")
    assert remove_model(path.name) == [path]
    with pytest.raises(ModelError, match="no such cached model"):
        remove_model(path.name)


def test_chat_on_a_folder_converts_then_reuses(run_cli, tiny_zh_hf):
    """The whole path through the CLI: the first run converts, the second finds the cached file."""
    args = ("generate", tiny_zh_hf, "你好", "--infer_dtype", "float16", "--max-new-tokens", "4", "--json",
            "--threads", "2")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["template"] == "llama2-chinese"
    cached = list_models()
    assert len(cached) == 1 and cached[0].name.endswith(".F16.gguf")
    second = run_cli(*args)
    assert second.returncode == 0 and "converting" not in second.stderr
    assert list_models() == cached
