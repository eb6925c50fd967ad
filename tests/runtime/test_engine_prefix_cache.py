"""Multi-turn chat reuses the KV cache of the shared prefix: a later turn evaluates only its new tokens,
however long the history is (counted as prompt tokens actually evaluated, not wall time)."""

from __future__ import annotations

import pytest

from lcpp_zh.chat.session import ChatSession
from lcpp_zh.runtime.engine import Engine
from lcpp_zh.runtime.sampling import SamplingParams
from lcpp_zh.runtime.settings import EngineSettings

QUESTIONS = ["Name a fruit.", "Name a color.", "Name an animal.", "Name a city.", "Name a planet.", "Name a tree."]


@pytest.fixture(scope="module")
def engine(smollm2_gguf):
    with Engine(smollm2_gguf, EngineSettings(n_ctx=2048, n_parallel=2, n_threads=2)) as eng:
        yield eng


def _turns(session: ChatSession, questions: list[str]):
    finished = []
    for question in questions:
        "".join(session.ask(question))
        finished.append(session.last)
    return finished


def test_later_turns_evaluate_only_new_tokens(engine):
    session = ChatSession(engine, params=SamplingParams(temperature=0, max_tokens=24))
    finished = _turns(session, QUESTIONS)
    evaluated = [f.evaluated_tokens for f in finished]
    prompts = [f.prompt_tokens for f in finished]
    assert prompts[-1] > 3 * prompts[1]  # the history really grows
    # From the second turn on, only the new question, its template tokens and the re-tokenized tail of the
    # previous answer are evaluated: bounded, not growing with the history.
    assert max(evaluated[1:]) < 40, evaluated
    assert evaluated[-1] <= evaluated[1] + 12, evaluated


def test_regen_rereads_nothing(engine):
    session = ChatSession(engine, params=SamplingParams(temperature=0, max_tokens=16))
    _turns(session, QUESTIONS[:3])
    "".join(session.regen())
    # Only the last prompt token is evaluated again (its logits start the new answer).
    assert session.last.evaluated_tokens == 1
    assert session.last.prompt_tokens > 60


def test_two_conversations_keep_their_own_slots(engine):
    a = ChatSession(engine, params=SamplingParams(temperature=0, max_tokens=16))
    b = ChatSession(engine, params=SamplingParams(temperature=0, max_tokens=16))
    for qa, qb in zip(QUESTIONS[:3], QUESTIONS[3:], strict=True):
        "".join(a.ask(qa))
        "".join(b.ask(qb))
    assert a.last.evaluated_tokens < 40 and b.last.evaluated_tokens < 40


def test_context_full_drops_oldest_turns(smollm2_gguf):
    with Engine(smollm2_gguf, EngineSettings(n_ctx=256, n_parallel=1, n_threads=2)) as small:
        session = ChatSession(small, system="You are terse.", params=SamplingParams(temperature=0, max_tokens=32))
        for i in range(8):
            "".join(session.ask(f"Question number {i}: tell me something about the number {i} in detail."))
        assert any("dropped the oldest turn" in n for n in session.notices)
        assert session.system == "You are terse."
        assert session.messages[0]["role"] == "user" and "number 0" not in session.messages[0]["content"]


def test_message_too_long_is_a_clear_error(smollm2_gguf):
    from lcpp_zh.errors import EngineError

    with Engine(smollm2_gguf, EngineSettings(n_ctx=256, n_parallel=1, n_threads=2)) as small:
        session = ChatSession(small, params=SamplingParams(max_tokens=16))
        with pytest.raises(EngineError, match="context holds"):
            "".join(session.ask("word " * 400))
