"""Lazy grammars (lcpp_zh.runtime.lazy_grammar) on a real engine (SmolLM2): free text until the trigger is
generated, then the grammar; a token that would run past the trigger is never chosen; without the trigger the
text is exactly what greedy sampling gives with no grammar at all."""

from __future__ import annotations

import pytest

from lcpp_zh.errors import EngineError
from lcpp_zh.runtime.engine import Engine
from lcpp_zh.runtime.sampling import SamplingParams
from lcpp_zh.runtime.settings import EngineSettings

pytestmark = pytest.mark.slow

FORCED = ' {"ok": true}'
GRAMMAR = 'root ::= " {\\"ok\\": true}"'


@pytest.fixture(scope="module")
def engine(smollm2_gguf):
    eng = Engine(smollm2_gguf, EngineSettings(n_ctx=256, n_threads=2))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def prompt(engine):
    return engine.tokenize("<|im_start|>user\nName three colors.<|im_end|>\n<|im_start|>assistant\n", add_bos=False)


def greedy(**extra) -> SamplingParams:
    return SamplingParams(**{"temperature": 0.0, "repeat_penalty": 1.0, "max_tokens": 8, **extra})


def test_grammar_applies_after_the_trigger(engine, prompt):
    first, _ = engine.generate(prompt, greedy(max_tokens=1))
    text, end = engine.generate(prompt, greedy(max_tokens=32, grammar=GRAMMAR, grammar_triggers=[first]))
    assert text == first + FORCED
    assert end.reason == "stop"


def test_a_token_running_past_the_trigger_is_not_chosen(engine, prompt):
    plain, _ = engine.generate(prompt, greedy())
    pieces = [engine.detokenize([t]) for t in engine.tokenize(plain, add_bos=False, special=False)]
    k = next(i for i, piece in enumerate(pieces) if len(piece.strip()) >= 2)
    before = "".join(pieces[:k])
    trigger = before + pieces[k][:-1]  # ends inside token k
    text, _ = engine.generate(prompt, greedy(max_tokens=16, grammar=GRAMMAR, grammar_triggers=[trigger[-60:]]))
    assert text.startswith(before) and not text.startswith(before + pieces[k])
    if trigger in text:  # generated later, ending at a token: the grammar follows it exactly
        assert text.split(trigger, 1)[1] == FORCED


def test_no_trigger_leaves_the_text_unchanged(engine, prompt):
    plain, _ = engine.generate(prompt, greedy())
    lazy, _ = engine.generate(prompt, greedy(grammar=GRAMMAR, grammar_triggers=["\u0001never"]))
    assert lazy == plain


def test_triggers_need_a_grammar_and_few_short_strings():
    with pytest.raises(EngineError, match="need a grammar"):
        SamplingParams(grammar_triggers=["<tool_call>"])
    with pytest.raises(EngineError, match="few short strings"):
        SamplingParams(grammar=GRAMMAR, grammar_triggers=["x" * 1000])
    with pytest.raises(EngineError, match="few short strings"):
        SamplingParams(grammar=GRAMMAR, grammar_triggers=[""])
