"""`lcpp-zh convert --lora` and `lcpp-zh convert-lora` as a user runs them, bad adapters included.

Good input is checked against peft's merge_and_unload() (logits) and llama.cpp's GGUF reader; bad input must
give one `error: ...` line, exit status 1, no traceback and no file left behind.
"""

from __future__ import annotations

import os
import shutil
import zipfile

import pytest
from lora_adapters import edit_config, make_adapter, merged_reference, model_logits

from fixtures.logits import llama_cpp_logits, llama_cpp_model, nmse

TOKEN_IDS = [1, 29, 310, 1190, 57, 640, 900, 12, 401, 1001, 1150, 33]


@pytest.fixture(scope="module")
def cli_adapters(tiny_zh_hf, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-adapters")
    return {
        "a": make_adapter(tiny_zh_hf, root / "a", r=4, alpha=8, seed=11),
        "b": make_adapter(tiny_zh_hf, root / "b", r=2, alpha=4, seed=12, weights="bin",
                          targets=("q_proj", "k_proj", "gate_proj")),
        "resize": make_adapter(tiny_zh_hf, root / "resize", seed=13, resize=True, targets=("q_proj",)),
    }


def test_convert_merges_several_adapters_with_scales(run_cli, tiny_zh_hf, cli_adapters, tmp_path):
    out = tmp_path / "merged.gguf"
    proc = run_cli("convert", tiny_zh_hf, "--lora", cli_adapters["a"], "--lora", cli_adapters["b"],
                   "--lora-scale", "0.5", "--lora-scale", "2", "--outtype", "f32", "-o", out, "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    loras = [(cli_adapters["a"], 0.5), (cli_adapters["b"], 2.0)]
    reference = model_logits(merged_reference(tiny_zh_hf, loras), TOKEN_IDS)
    got = llama_cpp_logits(llama_cpp_model(out), TOKEN_IDS)
    assert nmse(got, reference) < 1e-8  # the bar is 1e-5; measured ~1e-12
    assert (got.argmax(-1) == reference.argmax(-1)).all()


def test_convert_lora_writes_a_loadable_adapter(run_cli, tiny_zh_hf, tiny_zh_gguf, cli_adapters, tmp_path):
    import gguf

    out = tmp_path / "adapter.gguf"
    proc = run_cli("convert-lora", cli_adapters["b"], "--base", tiny_zh_hf, "-o", out, "--outtype", "f16")
    assert proc.returncode == 0, proc.stderr
    names = {t.name: t.tensor_type for t in gguf.GGUFReader(out).tensors}
    assert set(names) == {f"blk.{i}.{n}.weight.lora_{x}" for i in (0, 1) for n in ("attn_q", "attn_k", "ffn_gate")
                          for x in "ab"}
    assert set(names.values()) == {gguf.GGMLQuantizationType.F16}
    from llama_cpp import Llama

    llm = Llama(model_path=str(tiny_zh_gguf), lora_path=str(out), n_ctx=64, n_threads=2, verbose=False)
    assert llm.tokenize("你好".encode()) != []


def _payload_bin(adapter_dir, marker):
    """Replace adapter_model.bin by a PyTorch zip whose pickle would run a shell command."""
    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": Payload()},
               adapter_dir / "adapter_model.bin")
    assert zipfile.is_zipfile(adapter_dir / "adapter_model.bin")


def _break(kind, adapter_dir, tmp_path):
    if kind == "missing-config":
        (adapter_dir / "adapter_config.json").unlink()
    elif kind == "rank-mismatch":
        edit_config(adapter_dir, r=8)
    elif kind == "pickle-payload":
        _payload_bin(adapter_dir, tmp_path / "PWNED")


@pytest.mark.parametrize("command", ["convert", "convert-lora"])
@pytest.mark.parametrize("kind, message", [
    ("missing-config", "no adapter_config.json"),
    ("rank-mismatch", "r is 8 for"),
    ("pickle-payload", "refusing to load it"),
    ("wrong-base", "wrong base model"),
])
def test_bad_adapters_fail_cleanly(run_cli, tiny_llama, tiny_zh_hf, cli_adapters, tmp_path, command, kind, message):
    adapter = tmp_path / "adapter"
    shutil.copytree(cli_adapters["b"], adapter)
    _break(kind, adapter, tmp_path)
    base = tiny_llama(num_key_value_heads=2) if kind == "wrong-base" else tiny_zh_hf
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    if command == "convert":
        proc = run_cli("convert", base, "--lora", adapter, "--outtype", "f32", "-o", out_dir / "m.gguf", "-q")
    else:
        proc = run_cli("convert-lora", adapter, "--base", base, "-o", out_dir / "a.gguf", "-q")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(out_dir.iterdir()) == []
    assert not (tmp_path / "PWNED").exists()


def test_convert_lora_refuses_full_weight_adapter(run_cli, tiny_zh_hf, cli_adapters, tmp_path):
    proc = run_cli("convert-lora", cli_adapters["resize"], "--base", tiny_zh_hf, "-o", tmp_path / "a.gguf")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "lcpp-zh convert BASE --lora" in proc.stderr
    assert not (tmp_path / "a.gguf").exists()


def test_more_scales_than_adapters_is_a_usage_error(run_cli, tiny_zh_hf, cli_adapters, tmp_path):
    proc = run_cli("convert", tiny_zh_hf, "--lora", cli_adapters["a"], "--lora-scale", "1", "--lora-scale", "2",
                   "-o", tmp_path / "m.gguf")
    assert proc.returncode == 2 and "--lora-scale" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_adapter_by_hub_repo_id_from_the_offline_cache(run_cli, tiny_zh_hf, cli_adapters, tmp_path):
    """FlagAlpha's Chinese LoRA lives on the hub: repo ids work through huggingface_hub's cache layout."""
    import gguf

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--FlagAlpha--Llama2-Chinese-7b-Chat-LoRA"
    shutil.copytree(cli_adapters["b"], repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "zh-lora.gguf"
    proc = run_cli("convert-lora", "FlagAlpha/Llama2-Chinese-7b-Chat-LoRA", "--base", tiny_zh_hf, "-o", out, env=env)
    assert proc.returncode == 0, proc.stderr
    assert len(gguf.GGUFReader(out).tensors) == 12
    proc = run_cli("convert-lora", "FlagAlpha/Not-There-LoRA", "--base", tiny_zh_hf, "-o", out, env=env)
    assert proc.returncode == 1 and proc.stderr.startswith("error: FlagAlpha/Not-There-LoRA: not in the local hub")
