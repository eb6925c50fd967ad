"""Incremental detokenization and stop strings: real vocabularies (SmolLM2's byte-level BPE, the tiny Atom
SentencePiece with byte fallback), fed one token at a time, must give back exactly the text with no U+FFFD."""

from __future__ import annotations

import pytest

from lcpp_zh.runtime.detokenizer import IncrementalDetokenizer, StopMatcher
from lcpp_zh.runtime.llama_api import LlamaModel

ZH_TEXT = "中文测试：龘靐齉爩，北京欢迎你！🐉 Llama 2 模型在普通电脑上运行。"


@pytest.fixture(scope="module")
def smollm2_vocab(smollm2_gguf):
    model = LlamaModel(smollm2_gguf, vocab_only=True)
    yield model
    model.close()


@pytest.fixture(scope="module")
def tiny_vocab(tiny_zh_gguf):
    model = LlamaModel(tiny_zh_gguf, vocab_only=True)
    yield model
    model.close()


def _stream(model: LlamaModel, tokens: list[int]) -> list[str]:
    detok = IncrementalDetokenizer(model.piece)
    return [detok.feed(t) for t in tokens] + [detok.flush()]


@pytest.mark.parametrize("vocab", ["smollm2_vocab", "tiny_vocab"])
def test_token_by_token_roundtrip(vocab, request):
    model = request.getfixturevalue(vocab)
    tokens = model.tokenize(ZH_TEXT, add_bos=False, special=False)
    pieces = [model.piece(t) for t in tokens]
    # The test only means something if characters really are split over several tokens.
    assert any(_incomplete_utf8(p) for p in pieces), "no split character in this tokenization"
    parts = _stream(model, tokens)
    assert all("\ufffd" not in p for p in parts)
    assert "".join(parts).lstrip(" ") == ZH_TEXT  # SentencePiece's dummy-prefix space aside


def test_byte_fallback_pieces_are_single_bytes(tiny_vocab):
    tokens = tiny_vocab.tokenize("龘", add_bos=False, special=False)
    pieces = [tiny_vocab.piece(t) for t in tokens if tiny_vocab.piece(t).strip()]
    assert b"".join(pieces) == "龘".encode()
    assert [len(p) for p in pieces] == [1, 1, 1]  # <0xE9> <0xBE> <0x98>


def test_pieces_longer_than_32_bytes_are_kept(smollm2_vocab):
    """llama-cpp-python's detokenize truncates pieces to 32 bytes; ours must not."""
    longest = max(range(smollm2_vocab.n_vocab), key=lambda t: len(smollm2_vocab.piece(t, special=True)))
    piece = smollm2_vocab.piece(longest, special=True)
    if len(piece) <= 32:
        pytest.skip("SmolLM2 has no piece over 32 bytes")
    assert len(piece) > 32
    assert smollm2_vocab.tokenize(piece.decode("utf-8"), add_bos=False, special=True) == [longest]


def test_incomplete_character_at_end_is_not_dropped():
    pieces = {1: "北".encode()[:2], 2: "北".encode()[2:], 3: b"\xe4"}
    detok = IncrementalDetokenizer(pieces.__getitem__)
    assert detok.feed(1) == "" and detok.pending_bytes == 2
    assert detok.feed(2) == "北" and detok.pending_bytes == 0
    assert detok.feed(3) == ""
    # A character the model never finished: reported (not silently dropped).
    assert detok.flush() == "\ufffd"


def test_stop_matcher_holds_back_possible_prefix():
    stops = StopMatcher(["Human:", "</s>"])
    assert stops.push("你好\nHu") == ("你好\n", False)
    assert stops.push("m") == ("", False)
    assert stops.push("an: next") == ("", True)
    assert stops.stopped == "Human:"
    assert stops.flush() == ""


def test_stop_matcher_releases_false_alarm():
    stops = StopMatcher(["Human:"])
    assert stops.push("Hum") == ("", False)
    assert stops.push("ble pie") == ("Humble pie", False)
    assert stops.push("H") == ("", False)
    assert stops.flush() == "H"


def test_stop_matcher_earliest_stop_wins():
    stops = StopMatcher(["B", "AB"])
    assert stops.push("xxAB") == ("xx", True)
    assert stops.stopped == "AB"


def _incomplete_utf8(piece: bytes) -> bool:
    try:
        piece.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True
