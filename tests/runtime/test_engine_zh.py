"""Chinese streaming through the real engine on the tiny Atom-style GGUF (SentencePiece with byte fallback):
characters missing from the vocabulary come out as 3-4 byte tokens; the stream must print each one whole,
never U+FFFD, never lose a byte, also when max_tokens, a stop string or EOS ends generation."""

from __future__ import annotations

import pytest

from lcpp_zh.runtime.engine import Engine, TextDelta
from lcpp_zh.runtime.sampling import SamplingParams
from lcpp_zh.runtime.settings import EngineSettings

RARE = "龘靐齉爩"  # not in the tiny vocabulary: byte-fallback tokens only


@pytest.fixture(scope="module")
def tiny(tiny_zh_gguf):
    with Engine(tiny_zh_gguf, EngineSettings(n_ctx=512, n_parallel=2, n_threads=2)) as engine:
        yield engine


def _gbnf(text: str) -> str:
    return f'root ::= "{text}"'


def _run(engine: Engine, params: SamplingParams):
    prompt = engine.tokenize("<s>Human: 你好\n</s><s>Assistant: ", add_bos=False)
    deltas, finished = [], None
    for event in engine.submit(prompt, params):
        if isinstance(event, TextDelta):
            deltas.append(event.text)
        else:
            finished = event
    return deltas, finished


def _params(**kw) -> SamplingParams:
    return SamplingParams(temperature=1.0, top_k=0, top_p=1.0, repeat_penalty=1.0, seed=7, **kw)


def test_rare_characters_are_byte_tokens(tiny):
    tokens = tiny.tokenize(RARE, add_bos=False, special=False)
    assert len(tokens) >= 3 * len(RARE)


def test_split_characters_stream_whole(tiny):
    target = RARE + "北京" + RARE[::-1]
    deltas, finished = _run(tiny, _params(grammar=_gbnf(target), max_tokens=200))
    assert finished.reason == "stop"  # the grammar ends, only EOS is left
    assert "".join(deltas) == target
    assert all("\ufffd" not in d and d for d in deltas)
    assert finished.completion_tokens > len(deltas)  # several tokens per printed character


def test_max_tokens_in_the_middle_of_a_character(tiny):
    deltas, finished = _run(tiny, _params(grammar=_gbnf(RARE), max_tokens=1))
    assert finished.reason == "length"
    assert "".join(deltas) == RARE[0]  # finished the character instead of cutting it
    assert finished.completion_tokens == 3


def test_stop_string_after_split_character(tiny):
    deltas, finished = _run(tiny, _params(grammar=_gbnf(RARE[:2] + "X" + RARE[2:]), stop=["X"], max_tokens=50))
    assert finished.reason == "stop" and finished.stop == "X"
    assert "".join(deltas) == RARE[:2]


def test_random_output_loses_no_byte(tiny):
    """Whatever the random model emits, the streamed deltas equal decoding all its bytes at once."""
    prompt = tiny.tokenize("中文", add_bos=True)
    for seed in range(3):
        deltas, finished = [], None
        for event in tiny.submit(prompt, _params(max_tokens=150).replace(seed=seed)):
            if isinstance(event, TextDelta):
                deltas.append(event.text)
            else:
                finished = event
        raw = b"".join(tiny.piece(t) for t in finished.tokens)
        assert "".join(deltas) == raw.decode("utf-8", errors="replace")
        assert finished.completion_tokens == len(finished.tokens)
