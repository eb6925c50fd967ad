"""Checkpoints whose SentencePiece tokenizer comes only as tokenizer.json (byte fallback, a ▁ decoder, no
tokenizer.model): converted byte for byte as llama.cpp's convert_hf_to_gguf.py does (its Hugging Face
vocabulary path), and what llama.cpp then tokenizes, against transformers' LlamaTokenizerFast.
"""

from __future__ import annotations

import json

import pytest

from fixtures.gguf_compare import compare_gguf, format_diffs, read_kv
from fixtures.tiny_llama import ADDED_NORMAL, ADDED_SPECIAL, TinySpec
from fixtures.tiny_llama_json import build_tiny_llama_json
from fixtures.tokenizer_strings import parity_strings
from lcpp_zh.convert.pipeline import convert_checkpoint
from lcpp_zh.errors import TokenizerError

N_TOKENS = 1202  # 1200 SentencePiece pieces and the two added tokens


@pytest.fixture(scope="module")
def json_hf():
    """The tokenizer.json-only tiny checkpoint, its config vocabulary the tokenizer's size."""
    return build_tiny_llama_json(TinySpec(vocab_size=N_TOKENS))


def test_fixture_is_sentencepiece_style_json_only(json_hf):
    assert not (json_hf / "tokenizer.model").exists()
    data = json.loads((json_hf / "tokenizer.json").read_text(encoding="utf-8"))
    assert data["model"]["type"] == "BPE" and data["model"]["byte_fallback"] is True
    assert data["decoder"]["type"] == "Sequence"


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_matches_reference(json_hf, reference_gguf, tmp_path, outtype):
    ours = convert_checkpoint(json_hf, tmp_path / "ours.gguf", outtype=outtype)
    diffs = compare_gguf(ours, reference_gguf(json_hf, outtype))
    assert not diffs, f"ours differs from llama.cpp's converter:\n{format_diffs(diffs)}"
    kv = read_kv(ours)
    assert kv["tokenizer.ggml.model"][1] == "llama"
    tokens, types = kv["tokenizer.ggml.tokens"][1], kv["tokenizer.ggml.token_type"][1]
    assert len(tokens) == N_TOKENS
    assert tokens[1200:] == [ADDED_SPECIAL, ADDED_NORMAL] and types[1200:] == [3, 4]  # CONTROL, USER_DEFINED
    assert types[tokens.index("<0x0A>")] == 6 and types[1] == 3  # BYTE; <s> is CONTROL


def test_padded_config_matches_reference(tiny_llama, reference_gguf, tmp_path):
    """A config vocabulary larger than the tokenizer: the reference writes the tokenizer's tokens only."""
    hf_dir = build_tiny_llama_json(TinySpec())
    ours = convert_checkpoint(hf_dir, tmp_path / "ours.gguf", outtype="f16")
    diffs = compare_gguf(ours, reference_gguf(hf_dir, "f16"))
    assert not diffs, format_diffs(diffs)


@pytest.fixture(scope="module")
def json_gguf(json_hf, tmp_path_factory):
    return convert_checkpoint(json_hf, tmp_path_factory.mktemp("json") / "tiny.f32.gguf", outtype="f32")


@pytest.fixture(scope="module")
def both_tokenizers(json_hf, json_gguf):
    """(transformers' fast tokenizer from the folder, a function giving llama.cpp's ids on our GGUF)."""
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(json_hf))
    assert tok.is_fast and len(tok) == N_TOKENS
    model = Llama(model_path=str(json_gguf), vocab_only=True, verbose=False)
    yield tok, lambda text: model.tokenize(text.encode("utf-8"), add_bos=True, special=True)
    model.close()


def test_llama_cpp_spells_the_same_text(both_tokenizers):
    """Every token text, byte piece, ▁ and special token came across: llama.cpp's ids decode, through
    transformers, to the text transformers' own ids decode to. Strings with the normalized added token are
    left out: transformers' fast tokenizer adds no ▁ after it while llama.cpp (like the slow tokenizer with
    legacy=True) starts the next fragment with one, whatever the converter writes."""
    tok, llama_cpp = both_tokenizers
    strings = [s for s in parity_strings() if ADDED_NORMAL not in s]
    assert len(strings) >= 1000
    bad = [s for s in strings if tok.decode(llama_cpp(s)) != tok.decode(tok.encode(s))]
    assert not bad, f"{len(bad)} of {len(strings)} strings differ, e.g. {bad[:5]!r}"


@pytest.mark.xfail(strict=True, reason="llama.cpp's converter gives every token score -1000 on this path (tokenizer.json "
                                       "has merges, not scores), so llama.cpp merges pieces left to right instead of "
                                       "by BPE rank: about a quarter of the strings get another segmentation")
def test_same_ids_as_transformers(both_tokenizers):
    tok, llama_cpp = both_tokenizers
    strings = [s for s in parity_strings() if ADDED_NORMAL not in s]
    bad = [s for s in strings if tok.encode(s) != llama_cpp(s)]
    assert not bad, f"{len(bad)} of {len(strings)} strings differ, e.g. {bad[:5]!r}"


def test_too_small_config_vocab_is_refused(json_hf, copy_checkpoint, tmp_path):
    hf_dir = copy_checkpoint(json_hf)
    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    config["vocab_size"] = 1100
    (hf_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(TokenizerError, match="vocab_size 1100 is smaller than the tokenizer's 1202"):
        convert_checkpoint(hf_dir, tmp_path / "out.gguf", outtype="f16")
    assert not (tmp_path / "out.gguf").exists()
