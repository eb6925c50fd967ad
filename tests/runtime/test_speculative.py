"""Speculative decoding on the real SmolLM2: the output with guesses (n-gram lookup, a draft model) is token for
token the output without them, in every way an answer can end and with several slots at once; the guesses
are counted per answer and in /metrics. The reference is the engine with speculative decoding off.

Identity holds where llama.cpp computes a position the same in a batch of one token and of several: on the CPU,
exactly below about 256 cells in use (a single-token decode takes other kernels in longer contexts, where
logits differ by up to ~0.7 and a near-tie can flip), so the answers here stay short; the one that runs to
the context's end is a confident copy.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from lcpp_zh.errors import EngineError
from lcpp_zh.runtime.engine import Engine
from lcpp_zh.runtime.sampling import SamplingParams
from lcpp_zh.runtime.settings import EngineSettings
from lcpp_zh.runtime.speculative import AUTO_PAUSE, AUTO_WINDOW, NgramIndex, Speculator

CODE = ("def area(width, height):\n    return width * height\n\n"
        "def perimeter(width, height):\n    return 2 * (width + height)\n\n"
        "def describe(shape):\n    return f'{shape.name}: {area(shape.w, shape.h)}'\n")
N_CTX = 512
GREEDY = SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=40)


def chatml(text: str) -> str:
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def settings(**changes) -> EngineSettings:
    return EngineSettings(n_ctx=N_CTX, n_parallel=3, n_threads=2, cache_ram_mb=0).replace(**changes)


@pytest.fixture(scope="module")
def plain(smollm2_gguf):
    with Engine(smollm2_gguf, settings(spec_ngram="off")) as engine:
        yield engine


@pytest.fixture(scope="module")
def spec(smollm2_gguf):
    with Engine(smollm2_gguf, settings(spec_ngram="on", draft_max=8)) as engine:
        yield engine


def both(plain, spec, prompt: str, params: SamplingParams = GREEDY):
    tokens = plain.tokenize(chatml(prompt), add_bos=False)
    return plain.generate(tokens, params), spec.generate(tokens, params)


# --- the n-gram index (prompt lookup) ---
def test_ngram_draft_prefers_the_longest_suffix_then_the_latest_place():
    index = NgramIndex([1, 2, 3, 4, 5, 9, 9, 2, 3, 4, 7, 8, 1, 2, 3, 4])
    assert index.draft(3) == [5, 9, 9]  # [1, 2, 3, 4] occurred at 0..3; [2, 3, 4] alone would give [7, 8, 1]
    index.extend([6, 2, 3, 4])
    assert index.draft(2) == [6, 2]  # now only [2, 3, 4] matches: its latest earlier place is 13..15


def test_ngram_draft_needs_a_match_and_stops_at_the_end():
    index = NgramIndex([5, 6, 7, 8, 5, 6])
    assert index.draft(4) == []  # [8, 5, 6] never occurred before, and two tokens are too few to match
    index.extend([7])
    assert index.draft(10) == [8, 5, 6, 7]  # the copy may run into the suffix itself
    assert index.draft(0) == []


# --- token for token the same output ---
def test_copying_is_identical_and_accepts_guesses(plain, spec):
    (text, ref), (spec_text, got) = both(plain, spec, "Repeat this code exactly:\n" + CODE)
    assert got.tokens == ref.tokens and spec_text == text
    assert ref.draft_tokens == 0
    assert 0 < got.draft_accepted <= got.draft_tokens
    stats = spec.stats()
    assert stats["draft_tokens"] >= got.draft_tokens and stats["draft_accepted"] >= got.draft_accepted


def test_seeded_sampling_is_identical(plain, spec):
    params = SamplingParams(temperature=0.7, top_k=40, top_p=0.9, seed=1234, max_tokens=32)
    (_, ref), (_, got) = both(plain, spec, "Rewrite with shorter names:\n" + CODE, params)
    assert got.tokens == ref.tokens


def test_grammar_and_penalties_are_identical(plain, spec):
    grammar = 'root ::= ("def " [a-z]+ "(width, height):\\n    return " [a-z0-9 *+()]+ "\\n\\n")+'
    params = SamplingParams(temperature=0.0, repeat_penalty=1.1, max_tokens=36, grammar=grammar)
    (_, ref), (_, got) = both(plain, spec, "Repeat the first two functions:\n" + CODE, params)
    assert ref.reason in ("length", "stop") and got.tokens == ref.tokens


def test_stop_string_inside_a_draft_is_identical(plain, spec):
    (text, _), _ = both(plain, spec, "Repeat this code exactly:\n" + CODE)
    stop = "perimeter" if "perimeter" in text else text[len(text) // 2:len(text) // 2 + 6]
    params = GREEDY.replace(stop=[stop])
    (text, ref), (spec_text, got) = both(plain, spec, "Repeat this code exactly:\n" + CODE, params)
    assert ref.stop == stop and (got.stop, got.reason, spec_text) == (ref.stop, ref.reason, text)
    assert got.tokens == ref.tokens


@pytest.mark.parametrize("max_tokens", [1, 2, 9])
def test_max_tokens_is_identical(plain, spec, max_tokens):
    params = GREEDY.replace(max_tokens=max_tokens)
    (_, ref), (_, got) = both(plain, spec, "Repeat this code exactly:\n" + CODE, params)
    assert ref.reason == "length" and (got.reason, got.tokens) == (ref.reason, ref.tokens)


def concurrently(engine: Engine, prompts: list[str]) -> list:
    """Submit all prompts at once (they share the steps) and read each from its own thread."""
    streams = [engine.submit(engine.tokenize(chatml(p), add_bos=False), GREEDY) for p in prompts]
    results: list = [None] * len(prompts)

    def read(i: int) -> None:
        results[i] = streams[i].text()[1]

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    return results


def test_several_slots_at_once_are_identical(smollm2_gguf):
    # Fresh engines on both sides: batching several sequences changes llama.cpp's arithmetic slightly (the
    # cells' places in the shared cache), so the reference runs the same requests the same way, without guesses.
    prompts = ["Repeat this code exactly:\n" + CODE, "Rename `shape` to `item` in:\n" + CODE,
               "Say hello in three languages."]
    with Engine(smollm2_gguf, settings(spec_ngram="off")) as engine:
        refs = concurrently(engine, prompts)
    with Engine(smollm2_gguf, settings(spec_ngram="on", draft_max=8)) as engine:
        got = concurrently(engine, prompts)
    assert [f.tokens for f in got] == [f.tokens for f in refs]
    assert sum(f.draft_accepted for f in got) > 0


def test_guesses_never_cross_the_context_end(plain, spec):
    body = CODE
    prompt = plain.tokenize(chatml("Repeat this code exactly:\n" + body), add_bos=False)
    while len(prompt) < N_CTX - 24:  # the answer (a copy) runs into the end of the context
        body += CODE
        prompt = plain.tokenize(chatml("Repeat this code exactly:\n" + body), add_bos=False)
    prompt = prompt[-(N_CTX - 24):]
    params = GREEDY.replace(max_tokens=200)
    ref, got = plain.generate(prompt, params)[1], spec.generate(prompt, params)[1]
    assert ref.reason == "length" and ref.completion_tokens < 200
    assert (got.reason, got.tokens) == (ref.reason, ref.tokens)


# --- a draft model ---
def test_draft_model_output_is_identical(plain, smollm2_gguf):
    with Engine(smollm2_gguf, settings(spec_ngram="off", draft_model=str(smollm2_gguf), draft_max=6)) as engine:
        (_, ref), (_, got) = both(plain, engine, "Write one sentence about the sea.")
    assert got.tokens == ref.tokens
    assert got.draft_accepted > 0  # the model guessing for itself: mostly right


def test_draft_model_with_another_vocabulary_is_refused(smollm2_gguf, tiny_zh_gguf):
    with pytest.raises(EngineError, match="draft model .*(vocabulary|tokenizer)"):
        Engine(smollm2_gguf, settings(draft_model=str(tiny_zh_gguf)))


# --- settings, the auto rule, metrics ---
@pytest.mark.parametrize("changes", [{"spec_ngram": "sometimes"}, {"draft_min": 5, "draft_max": 4},
                                     {"draft_min": 0}])
def test_bad_settings_are_refused(changes):
    with pytest.raises(EngineError, match="spec_ngram|draft_min"):
        Speculator(EngineSettings(**changes))


def test_auto_stops_drafting_where_guesses_fail():
    spec = Speculator(EngineSettings(spec_ngram="auto", draft_max=8))
    generated = [1, 2, 3] * 10
    slot = SimpleNamespace(busy=True, next_token=3, seq_id=0, n_ctx=4096, tokens=[1, 2, 3] * 20, generated=generated,
                           n_generated=len(generated), req=SimpleNamespace(params=SamplingParams(max_tokens=512)))
    spec.begin(0, [1, 2, 3] * 10)
    assert spec.plan([slot], 512, 4096)[0][:3] == [1, 2, 3]
    spec.record(0, len(generated), AUTO_WINDOW, 0)  # a window of guesses, none accepted
    assert spec.plan([slot], 512, 4096) == {}
    generated += [1, 2, 3] * (AUTO_PAUSE // 3 + 1)
    slot.n_generated = len(generated)
    assert 0 in spec.plan([slot], 512, 4096)  # it tries again later
    on = Speculator(EngineSettings(spec_ngram="on", draft_max=8))
    on.begin(0, [1, 2, 3] * 10)
    on.record(0, len(generated), AUTO_WINDOW, 0)
    assert 0 in on.plan([slot], 512, 4096)  # "on" never stops


def test_metrics_report_guesses(spec):
    from lcpp_zh.server.metrics import Metrics

    metrics = Metrics()
    metrics.bind_models(lambda: [SimpleNamespace(alias="smol", engine=spec)])
    both(spec, spec, "Repeat this code exactly:\n" + CODE)
    text = metrics.render().decode()
    assert 'lcpp_zh_engine_draft_tokens_total{model="smol"}' in text
    assert 'lcpp_zh_engine_draft_accepted_total{model="smol"}' in text
    ratio = [line for line in text.splitlines() if line.startswith("lcpp_zh_engine_draft_acceptance_ratio{")]
    assert ratio and 0.0 < float(ratio[0].split()[-1]) <= 1.0
