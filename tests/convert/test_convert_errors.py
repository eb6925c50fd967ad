"""Bad input to `lcpp-zh convert`, run as a real subprocess: one `error:` line, exit 1, nothing left behind.

Covers a pickle that tries to run code (its payload must not run), a truncated safetensors shard, an
unsupported architecture, a missing tokenizer, a config vocab smaller than the tokenizer and an output
path that cannot be written. Each case is built from a copy of the tiny Chinese Llama.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest

from lcpp_zh.errors import CheckpointError, UnsafeCheckpointError


class _Payload:
    """Unpickling this runs `touch MARKER` through os.system: a restricted unpickler must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _assert_clean_failure(proc, out_dir: Path, expect: tuple[str, ...] = ()) -> str:
    """Exit 1, the last stderr line is `error: ...` (the only one), no traceback, out_dir empty."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert lines and lines[-1].startswith("error: "), proc.stderr
    assert sum(line.startswith("error:") for line in lines) == 1, proc.stderr
    message = lines[-1].lower()
    assert any(word in message for word in expect) if expect else True, f"unhelpful message: {lines[-1]}"
    assert not list(out_dir.iterdir()), f"left behind: {sorted(p.name for p in out_dir.iterdir())}"
    return lines[-1]


@pytest.fixture
def out_dir(tmp_path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


def _convert(run_cli, src: Path, out_dir: Path, *extra: str):
    return run_cli("convert", src, "-o", out_dir / "model.gguf", "--outtype", "f16", "--quiet", *extra)


def _weights_to_pickle(model: Path, payload_file: str, marker: Path, kind: str) -> None:
    """Replace the safetensors weights with a pytorch_model.bin whose pickle carries the payload."""
    (model / "model.safetensors").unlink()
    path = model / payload_file
    if kind == "torch-save":
        import torch

        # A real torch checkpoint with real tensor storages, and the payload beside them.
        torch.save({"model.norm.weight": torch.ones(64), "model.embed_tokens.weight": _Payload(marker)}, path)
        return
    data = pickle.dumps({"model.embed_tokens.weight": _Payload(marker)}, protocol=2)
    if kind == "zip":
        # torch.save's zip layout: <name>/data.pkl (+ version); readers unpickle data.pkl.
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", data)
            archive.writestr("archive/version", "3\n")
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("kind", ["torch-save", "zip", "legacy-pickle"])
def test_pickle_payload_is_refused_and_never_runs(kind, run_cli, copy_checkpoint, tiny_zh_hf, out_dir,
                                                  tmp_path):
    model = copy_checkpoint(tiny_zh_hf)
    marker = tmp_path / "PAYLOAD_RAN"
    _weights_to_pickle(model, "pytorch_model.bin", marker, kind)
    proc = _convert(run_cli, model, out_dir)
    assert not marker.exists(), "the pickle payload ran during conversion"
    _assert_clean_failure(proc, out_dir, expect=("pickle", "unsafe", "refus", "global", "system"))


def test_pickle_payload_raises_unsafe_checkpoint_error(copy_checkpoint, tiny_zh_hf, tmp_path):
    """The library side: a typed UnsafeCheckpointError, payload not run."""
    from lcpp_zh.convert.pipeline import convert_checkpoint

    model = copy_checkpoint(tiny_zh_hf)
    marker = tmp_path / "PAYLOAD_RAN"
    _weights_to_pickle(model, "pytorch_model.bin", marker, "torch-save")
    with pytest.raises(UnsafeCheckpointError):
        convert_checkpoint(model, tmp_path / "x.gguf", outtype="f16")
    assert not marker.exists()
    assert not (tmp_path / "x.gguf").exists()
    # Positive control: the payload is armed, an ordinary unpickler does run it.
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


def test_truncated_safetensors_shard(run_cli, copy_checkpoint, tiny_llama, out_dir):
    model = copy_checkpoint(tiny_llama(weights="safetensors-sharded"))
    shards = sorted(model.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3
    victim = shards[len(shards) // 2]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    proc = _convert(run_cli, model, out_dir)
    _assert_clean_failure(proc, out_dir, expect=("truncat", "short", "corrupt", "incomplete", victim.name.lower()))


def test_truncated_bin_shard(run_cli, copy_checkpoint, tiny_llama, out_dir):
    model = copy_checkpoint(tiny_llama(weights="bin-sharded", dtype="float16"))
    shards = sorted(model.glob("pytorch_model-*-of-*.bin"))
    victim = shards[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    proc = _convert(run_cli, model, out_dir)
    _assert_clean_failure(proc, out_dir)


def test_unsupported_architecture(run_cli, copy_checkpoint, tiny_zh_hf, out_dir):
    model = copy_checkpoint(tiny_zh_hf)
    config_path = model / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    config_path.write_text(json.dumps(config), encoding="utf-8")
    proc = _convert(run_cli, model, out_dir)
    message = _assert_clean_failure(proc, out_dir)
    assert "GPT2LMHeadModel" in message


def test_missing_tokenizer(run_cli, copy_checkpoint, tiny_zh_hf, out_dir):
    model = copy_checkpoint(tiny_zh_hf)
    (model / "tokenizer.model").unlink()
    assert not (model / "tokenizer.json").exists()
    proc = _convert(run_cli, model, out_dir)
    _assert_clean_failure(proc, out_dir, expect=("tokenizer",))


def test_config_vocab_smaller_than_tokenizer(run_cli, tiny_llama, out_dir):
    """vocab_size 1100 while the tokenizer has 1200 pieces + 2 added tokens (weights built to match 1100)."""
    model = tiny_llama(vocab_size=1100)
    proc = _convert(run_cli, model, out_dir)
    message = _assert_clean_failure(proc, out_dir, expect=("vocab",))
    assert "1100" in message, message


def test_config_vocab_smaller_raises_tokenizer_error(tiny_llama, tmp_path):
    from lcpp_zh.convert.pipeline import convert_checkpoint

    with pytest.raises(CheckpointError):
        convert_checkpoint(tiny_llama(vocab_size=1100), tmp_path / "x.gguf", outtype="f16")
    assert not list(tmp_path.glob("*.gguf*"))


def test_unwritable_output_path(run_cli, tiny_zh_hf, tmp_path):
    """The output's parent is a regular file (unwritable even for root): error, nothing created."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    blocker = out_dir / "not-a-folder"
    blocker.write_text("x")
    proc = run_cli("convert", tiny_zh_hf, "-o", blocker / "model.gguf", "--outtype", "f16", "--quiet")
    blocker.unlink()
    _assert_clean_failure(proc, out_dir)


def test_output_on_a_read_only_filesystem(run_cli, tiny_zh_hf):
    """/proc refuses new files even to root: the message must say the path cannot be written."""
    target = Path("/proc/lcpp-zh-test-output.gguf")
    proc = run_cli("convert", tiny_zh_hf, "-o", target, "--outtype", "f16", "--quiet")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert any(w in lines[0].lower() for w in ("writ", "permission", "read-only", "cannot create")), lines[0]
    assert not target.exists()


def test_missing_source_folder(run_cli, tmp_path, out_dir):
    proc = _convert(run_cli, tmp_path / "no-such-model", out_dir)
    _assert_clean_failure(proc, out_dir)


def test_interrupted_conversion_leaves_nothing(tiny_llama, tmp_path):
    """An interrupt in the middle of writing tensors (Ctrl-C) leaves no file, final or temporary."""
    from lcpp_zh.convert.pipeline import convert_checkpoint

    calls = []

    def interrupt(done: int, total: int) -> None:
        calls.append((done, total))
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(tiny_llama(weights="safetensors-sharded"), tmp_path / "x.gguf", outtype="f32",
                           progress=interrupt)
    assert len(calls) == 3 and calls[-1][0] < calls[-1][1]
    assert not list(tmp_path.iterdir()), sorted(p.name for p in tmp_path.iterdir())
