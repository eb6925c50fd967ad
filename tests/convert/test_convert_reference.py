"""lcpp-zh's converter against llama.cpp's own convert_hf_to_gguf.py (the pinned llama-cpp-python sdist).

Same tensor names, shapes, types and bytes, same llama.* / tokenizer.ggml.* metadata, for every outtype
on the tiny Chinese Llama in all its checkpoint layouts and hyper-parameter variants, and on SmolLM2.
Reference outputs are cached (tests/fixtures/reference.py); ours are converted fresh every session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.gguf_compare import compare_gguf, format_diffs, read_kv
from fixtures.tiny_llama import REMOTE_CODE_MARKER
from lcpp_zh.convert.pipeline import convert_checkpoint

# name -> TinySpec fields. Each variant exercises one part of the checkpoint list.
VARIANTS = {
    "safetensors-f32": {},
    "safetensors-sharded-bf16": {"weights": "safetensors-sharded", "dtype": "bfloat16"},
    "bin-sharded-f16-mixed": {"weights": "bin-sharded", "dtype": "float16"},
    "bin-f32": {"weights": "bin"},
    "gqa": {"num_key_value_heads": 2, "weights": "safetensors-sharded", "dtype": "float16"},
    "tied": {"tie_word_embeddings": True},
    "atom-rope-theta": {"rope_theta": 500000.0, "num_key_value_heads": 2, "tie_word_embeddings": True},
    "rope-linear": {"rope_scaling": (("rope_type", "linear"), ("factor", 2.0))},
    "rope-dynamic": {"rope_scaling": (("rope_type", "dynamic"), ("factor", 2.0))},
    "rope-yarn": {"rope_scaling": (("rope_type", "yarn"), ("factor", 4.0),
                                   ("original_max_position_embeddings", 128))},
}

# (variant, outtype): every outtype on the plain checkpoint, the interesting ones elsewhere.
CASES = [
    ("safetensors-f32", "f32"),
    ("safetensors-f32", "f16"),
    ("safetensors-f32", "bf16"),
    ("safetensors-f32", "q8_0"),
    ("safetensors-f32", "auto"),
    ("safetensors-sharded-bf16", "auto"),
    ("safetensors-sharded-bf16", "f16"),
    ("bin-sharded-f16-mixed", "auto"),
    ("bin-sharded-f16-mixed", "f32"),
    ("bin-sharded-f16-mixed", "q8_0"),
    ("bin-f32", "bf16"),
    ("gqa", "f16"),
    ("gqa", "q8_0"),
    ("tied", "f16"),
    ("atom-rope-theta", "f16"),
    ("rope-linear", "f16"),
    ("rope-dynamic", "f16"),
    ("rope-yarn", "f16"),
]


def _convert(hf_dir: Path, out_dir: Path, outtype: str) -> Path:
    out = out_dir / f"ours.{outtype}.gguf"
    written = Path(convert_checkpoint(hf_dir, out, outtype=outtype))
    assert written == out, f"convert_checkpoint returned {written}, expected the requested {out}"
    assert out.is_file()
    return out


@pytest.mark.parametrize(("variant", "outtype"), CASES, ids=[f"{v}-{o}" for v, o in CASES])
def test_tiny_matches_reference(variant, outtype, tiny_llama, reference_gguf, tmp_path):
    hf_dir = tiny_llama(**VARIANTS[variant])
    ours = _convert(hf_dir, tmp_path, outtype)
    ref = reference_gguf(hf_dir, outtype)
    diffs = compare_gguf(ours, ref)
    assert not diffs, f"{variant} {outtype}: ours differs from llama.cpp's converter:\n{format_diffs(diffs)}"


def test_conversion_never_runs_checkpoint_code(tiny_llama, tmp_path):
    """config.json's auto_map names Python files beside it (Atom does this); they must never be imported."""
    hf_dir = tiny_llama()
    marker = hf_dir / REMOTE_CODE_MARKER
    assert (hf_dir / "modeling_atom.py").is_file() and not marker.exists()
    _convert(hf_dir, tmp_path, "f16")
    assert not marker.exists(), "converting imported the checkpoint's auto_map code"


def test_output_folder_holds_only_the_result(tiny_zh_hf, tmp_path):
    """The temporary file is renamed into place: nothing else is left beside the output."""
    out = _convert(tiny_zh_hf, tmp_path, "q8_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_padded_vocab_matches_config(tiny_zh_hf, tmp_path):
    """config vocab_size 1216 > 1202 tokenizer entries: padded as llama.cpp does, and the added tokens kept."""
    kv = read_kv(_convert(tiny_zh_hf, tmp_path, "f16"))
    tokens = kv["tokenizer.ggml.tokens"][1]
    assert kv["llama.vocab_size"][1] == len(tokens) == 1216
    assert tokens[1200:1202] == ["<|sep|>", "羊驼模型"]
    assert tokens[-1] == "[PAD1215]"


@pytest.mark.parametrize("outtype", ["f16", "bf16"])
def test_smollm2_matches_reference(outtype, smollm2_hf, reference_gguf, converted):
    """Real weights: BPE tokenizer.json (pre-tokenizer smollm), GQA 9/3 heads, tied embeddings."""
    ours = converted(smollm2_hf, outtype)
    diffs = compare_gguf(ours, reference_gguf(smollm2_hf, outtype))
    assert not diffs, f"SmolLM2 {outtype}: ours differs from llama.cpp's converter:\n{format_diffs(diffs)}"


@pytest.mark.slow
def test_smollm2_q8_0_matches_reference(smollm2_hf, reference_gguf, converted):
    ours = converted(smollm2_hf, "q8_0")
    diffs = compare_gguf(ours, reference_gguf(smollm2_hf, "q8_0"))
    assert not diffs, f"SmolLM2 q8_0: ours differs from llama.cpp's converter:\n{format_diffs(diffs)}"


def _chat_template(path: Path) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("tokenizer.chat_template")
    return None if field is None else field.contents()


def test_smollm2_keeps_its_chat_template(smollm2_hf, reference_gguf, converted):
    """A checkpoint with its own template keeps it, exactly as the reference writes it."""
    ref_template = _chat_template(reference_gguf(smollm2_hf, "f16"))
    assert ref_template and "<|im_start|>" in ref_template
    assert _chat_template(converted(smollm2_hf, "f16")) == ref_template


def test_bin_checkpoint_converts_without_torch(tiny_llama, reference_gguf, tmp_path):
    """pytorch_model-*.bin shards are read without torch or transformers (blocked in a fresh interpreter)."""
    import subprocess
    import sys

    hf_dir = tiny_llama(weights="bin-sharded", dtype="float16")
    out = tmp_path / "ours.gguf"
    code = (
        "import sys\n"
        "for name in ('torch', 'transformers', 'safetensors.torch'):\n"
        "    sys.modules[name] = None  # any import of them now raises ImportError\n"
        "from lcpp_zh.convert.pipeline import convert_checkpoint\n"
        f"convert_checkpoint({str(hf_dir)!r}, {str(out)!r}, outtype='f16')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    diffs = compare_gguf(out, reference_gguf(hf_dir, "f16"))
    assert not diffs, format_diffs(diffs)


def test_comparison_detects_one_flipped_byte(tiny_zh_hf, reference_gguf, tiny_llama, tmp_path):
    """Negative control for compare_gguf: one changed byte of tensor data, or one changed hyper-parameter."""
    import shutil

    from gguf import GGUFReader

    ref = reference_gguf(tiny_zh_hf, "f16")
    copy = tmp_path / "flipped.gguf"
    shutil.copyfile(ref, copy)
    tensor = next(t for t in GGUFReader(str(ref)).tensors if t.name == "blk.1.attn_q.weight")
    with open(copy, "r+b") as f:
        f.seek(tensor.data_offset + 7)
        byte = f.read(1)[0]
        f.seek(tensor.data_offset + 7)
        f.write(bytes([byte ^ 0x01]))
    assert compare_gguf(copy, ref) == ["tensor blk.1.attn_q.weight: data differs (1 of 8192 bytes, type F16)"]
    other = reference_gguf(tiny_llama(rope_theta=500000.0), "f16")
    assert any("llama.rope.freq_base" in d for d in compare_gguf(other, ref))


def test_inspect_reports_the_files_facts(run_cli, tiny_llama, reference_gguf):
    """`lcpp-zh inspect --json` on llama.cpp's own output agrees with what GGUFReader reads from it."""
    import json
    from collections import Counter

    from gguf import GGUFReader

    ref = reference_gguf(tiny_llama(num_key_value_heads=2, weights="safetensors-sharded", dtype="float16"), "f16")
    proc = run_cli("inspect", ref, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    reader = GGUFReader(str(ref))
    field = {k: f.contents() for k, f in reader.fields.items()}
    assert info["architecture"] == "llama"
    assert info["context_length"] == field["llama.context_length"] == 512
    assert info["vocab_size"] == len(field["tokenizer.ggml.tokens"]) == 1216
    assert info["layers"] == field["llama.block_count"]
    assert info["kv_heads"] == field["llama.attention.head_count_kv"] == 2
    assert info["tensor_types"] == dict(Counter(t.tensor_type.name for t in reader.tensors))
    assert info["chat_template"] is None  # the reference writes none for this checkpoint
    assert info["size_bytes"] == ref.stat().st_size
