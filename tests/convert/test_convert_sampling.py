"""Sampling defaults travel with the model: general.sampling.* written at conversion, shown by inspect and
taken by the runtime as its defaults.

From generation_config.json the keys must equal llama.cpp's converter's (its gguf-py Metadata reads the same
file); a FlagAlpha checkpoint without any gets the Llama-Chinese README's settings, which the comparison
helper allows as the one difference from the reference (tests/fixtures/gguf_compare.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fixtures.gguf_compare import FLAGALPHA_SAMPLING_KV, compare_gguf, format_diffs, read_kv
from lcpp_zh.convert.pipeline import convert_checkpoint

SAMPLING = "general.sampling."
# What a model author might put in generation_config.json (repetition_penalty is HF's name for penalty_repeat).
OWN_CONFIG = {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1}


def _sampling_kv(path: Path) -> dict:
    return {k: v for k, v in read_kv(path).items() if k.startswith(SAMPLING)}


def _f32(x: float) -> float:
    return float(np.float32(x))


def _with_generation_config(copy_checkpoint, src: Path, extra: dict, name: str = "model") -> Path:
    hf_dir = copy_checkpoint(src, name)
    path = hf_dir / "generation_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**config, **extra}, indent=2), encoding="utf-8")
    return hf_dir


def _renamed(copy_checkpoint, src: Path, name_or_path: str, folder: str) -> Path:
    """A copy of the tiny checkpoint that does not look like a FlagAlpha model."""
    hf_dir = copy_checkpoint(src, folder)
    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    config["_name_or_path"] = name_or_path
    (hf_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return hf_dir


def test_generation_config_sampling_matches_reference(tiny_zh_hf, copy_checkpoint, reference_gguf, tmp_path):
    """A checkpoint's own settings: the same keys, types and values as llama.cpp's converter writes."""
    hf_dir = _with_generation_config(copy_checkpoint, tiny_zh_hf, OWN_CONFIG)
    ours = convert_checkpoint(hf_dir, tmp_path / "ours.gguf", outtype="f16")
    ref = reference_gguf(hf_dir, "f16")
    assert _sampling_kv(ref) == {
        "general.sampling.temp": (("FLOAT32",), _f32(0.6)),
        "general.sampling.top_p": (("FLOAT32",), _f32(0.9)),
        "general.sampling.top_k": (("INT32",), 40),
        "general.sampling.penalty_repeat": (("FLOAT32",), _f32(1.1)),
    }, "the reference converter no longer writes generation_config.json's sampling the way this test expects"
    diffs = compare_gguf(ours, ref)
    assert not diffs, format_diffs(diffs)
    assert _sampling_kv(ours) == _sampling_kv(ref)


def test_own_partial_settings_are_not_mixed_with_ours(tiny_zh_hf, copy_checkpoint, tmp_path):
    """An Atom checkpoint that sets only a temperature keeps just that: no recommended values mixed in."""
    hf_dir = _with_generation_config(copy_checkpoint, tiny_zh_hf, {"temperature": 0.7})
    ours = convert_checkpoint(hf_dir, tmp_path / "ours.gguf", outtype="f16")
    assert _sampling_kv(ours) == {"general.sampling.temp": (("FLOAT32",), _f32(0.7))}


def test_atom_without_settings_gets_flagalpha_values(tiny_zh_hf, reference_gguf, tmp_path):
    """The tiny checkpoint is named FlagAlpha/Atom-7B-Chat and its generation_config.json has only token ids."""
    generation = json.loads((tiny_zh_hf / "generation_config.json").read_text(encoding="utf-8"))
    assert not {"temperature", "top_p", "top_k", "repetition_penalty"} & generation.keys()
    ours = convert_checkpoint(tiny_zh_hf, tmp_path / "ours.gguf", outtype="f16")
    assert _sampling_kv(ours) == FLAGALPHA_SAMPLING_KV
    assert read_kv(ours)["general.sampling.temp"][1] == pytest.approx(0.3)
    ref = reference_gguf(tiny_zh_hf, "f16")
    assert _sampling_kv(ref) == {}  # llama.cpp's converter writes none: these four are the only extra keys
    assert not compare_gguf(ours, ref)


@pytest.mark.parametrize(("name_or_path", "folder"), [("FlagAlpha/Llama2-Chinese-7b-Chat", "checkpoint"),
                                                      ("someone/tiny-model", "Llama2-Chinese-13b-Chat")])
def test_llama2_chinese_by_any_name_gets_flagalpha_values(name_or_path, folder, tiny_zh_hf, copy_checkpoint, tmp_path):
    hf_dir = _renamed(copy_checkpoint, tiny_zh_hf, name_or_path, folder)
    assert _sampling_kv(convert_checkpoint(hf_dir, tmp_path / "ours.gguf", outtype="f16")) == FLAGALPHA_SAMPLING_KV


def test_other_model_without_settings_gets_none(tiny_zh_hf, copy_checkpoint, tmp_path):
    hf_dir = _renamed(copy_checkpoint, tiny_zh_hf, "someone/tiny-llama", "tiny-llama")
    assert _sampling_kv(convert_checkpoint(hf_dir, tmp_path / "ours.gguf", outtype="f16")) == {}


def test_quantized_file_keeps_the_settings(tiny_zh_hf, tmp_path):
    out = convert_checkpoint(tiny_zh_hf, tmp_path / "ours.Q8_0.gguf", quant="Q8_0")
    assert _sampling_kv(out) == FLAGALPHA_SAMPLING_KV


def _write_gguf(path: Path, sampling: dict) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in sampling.items():
        if isinstance(value, int):
            writer.add_int32(key, value)
        else:
            writer.add_float32(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


def test_comparison_allows_exactly_the_flagalpha_keys(tmp_path):
    """Negative controls for the one allowance in compare_gguf."""
    flagalpha = {"general.sampling.top_k": 50, "general.sampling.top_p": 0.95, "general.sampling.temp": 0.3,
                 "general.sampling.penalty_repeat": 1.3}
    ref = _write_gguf(tmp_path / "ref.gguf", {})
    assert compare_gguf(_write_gguf(tmp_path / "a.gguf", flagalpha), ref) == []
    other_value = _write_gguf(tmp_path / "b.gguf", {**flagalpha, "general.sampling.top_k": 40})
    assert len(compare_gguf(other_value, ref)) == 4
    one_more = _write_gguf(tmp_path / "c.gguf", {**flagalpha, "general.sampling.min_p": 0.05})
    assert len(compare_gguf(one_more, ref)) == 5
    ref_with_own = _write_gguf(tmp_path / "d.gguf", {"general.sampling.temp": 0.7})
    assert compare_gguf(_write_gguf(tmp_path / "e.gguf", flagalpha), ref_with_own) == [
        "kv general.sampling.penalty_repeat: extra (value 1.2999999523162842)",
        "kv general.sampling.top_k: extra (value 50)",
        "kv general.sampling.top_p: extra (value 0.949999988079071)",
        "kv general.sampling.temp: 0.30000001192092896 != 0.699999988079071",
    ]


def test_inspect_shows_the_settings(run_cli, tiny_zh_gguf):
    proc = run_cli("inspect", tiny_zh_gguf)
    assert proc.returncode == 0, proc.stderr
    assert "sampling: top_k 50, top_p 0.95, temp 0.3, penalty_repeat 1.3" in proc.stdout
    info = json.loads(run_cli("inspect", tiny_zh_gguf, "--json").stdout)
    assert info["sampling"] == {"top_k": 50, "top_p": 0.95, "temp": 0.3, "penalty_repeat": 1.3}


def test_inspect_without_settings(run_cli, smollm2_gguf):
    proc = run_cli("inspect", smollm2_gguf)
    assert proc.returncode == 0, proc.stderr
    assert "sampling: (none" in proc.stdout


def test_llama_server_takes_them_as_defaults(tiny_zh_gguf):
    """llama.cpp's own tools read the keys we write (names and types right): llama-server's /props."""
    import socket
    import subprocess
    import time
    import urllib.request

    from fixtures.llama_tools import llama_tool

    server = llama_tool("llama-server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([str(server), "-m", str(tiny_zh_gguf), "--host", "127.0.0.1", "--port", str(port),
                             "-c", "256", "-t", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/props", timeout=5) as response:
                    props = json.loads(response.read())
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    params = props["default_generation_settings"]["params"]
    assert (params["top_k"], params["top_p"], params["temperature"], params["repeat_penalty"]) == (
        50, pytest.approx(0.95), pytest.approx(0.3), pytest.approx(1.3))


def test_sampling_checkpoint_adds_nothing(run_cli, tiny_zh_hf, tmp_path):
    """`convert --sampling checkpoint`: only generation_config.json's settings (none here), as llama.cpp's."""
    out = tmp_path / "plain.gguf"
    proc = run_cli("convert", tiny_zh_hf, "-o", out, "--outtype", "f16", "--sampling", "checkpoint", "-q")
    assert proc.returncode == 0, proc.stderr
    assert _sampling_kv(out) == {}
    from lcpp_zh.errors import ConversionError

    with pytest.raises(ConversionError, match="unknown sampling 'seed'"):
        convert_checkpoint(tiny_zh_hf, tmp_path / "x.gguf", sampling="seed")
    assert not (tmp_path / "x.gguf").exists()
