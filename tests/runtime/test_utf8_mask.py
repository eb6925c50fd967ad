"""Valid UTF-8 by construction (lcpp_zh.runtime.utf8_mask): the token table and state machine against CPython's
strict UTF-8 decoder on synthetic vocabularies, then real generations with byte tokens (SmolLM2's byte-level
BPE, the tiny Chinese Llama's SentencePiece byte fallback) that must never hold an invalid sequence, and the
same tokens as llama.cpp's own sampling wherever no character is pending."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from lcpp_zh.runtime.engine import Engine
from lcpp_zh.runtime.sampling import SamplingParams
from lcpp_zh.runtime.settings import EngineSettings
from lcpp_zh.runtime.slots import MAX_EXTRA_TOKENS_FOR_CHARACTER
from lcpp_zh.runtime.utf8_mask import Utf8Guard, Utf8Table, is_valid_prefix, state_after

# Every kind of incomplete character: 2-, 3- and 4-byte leads, the four leads with a narrower second byte,
# and characters one or two continuation bytes in.
PENDING = [b"\xc3", b"\xe0", b"\xe4", b"\xed", b"\xef", b"\xf0", b"\xf1", b"\xf4", b"\xe4\xb8", b"\xf0\x90",
           b"\xf4\x8f", b"\xf0\x90\x80"]
# Range ends of every second-byte rule: a prefix that any completion makes valid has one made of these.
_PROBES = [bytes([b]) for b in (0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF)]


def strict_prefix_ok(data: bytes) -> bool:
    """Reference: CPython's strict decoder accepts `data` completed by some continuation bytes."""
    for n in range(4):
        for tail in itertools.product(_PROBES, repeat=n):
            try:
                (data + b"".join(tail)).decode("utf-8")
                return True
            except UnicodeDecodeError:
                pass
    return False


def reference_allowed(pieces: list[bytes], eog: list[bool], pending: bytes) -> set[int]:
    if not pending:
        return {t for t, p in enumerate(pieces) if eog[t] or not p or strict_prefix_ok(p)}
    return {t for t, p in enumerate(pieces) if p and not eog[t] and strict_prefix_ok(pending + p)}


def synthetic_vocab(seed: int = 0, n_random: int = 400) -> tuple[list[bytes], list[bool]]:
    """Control tokens (empty pieces, two of them end-of-generation), all 256 byte tokens, words, characters,
    and random pieces made of UTF-8-looking bytes (leads, continuations, ASCII, invalid bytes)."""
    rng = random.Random(seed)
    pieces = [b"", b"", b""] + [bytes([b]) for b in range(256)]
    pieces += [w.encode() for w in ("a", " the", "中", " 北京", "😀", "é", "\U0010ffff", "\ud7ff")]
    alphabet = [0x41, 0x20, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC2, 0xDF, 0xE0, 0xE4, 0xED, 0xEF,
                0xF0, 0xF4, 0xF5, 0xFF]
    for _ in range(n_random):
        pieces.append(bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 6))))
    eog = [i in (0, 2) for i in range(len(pieces))]
    return pieces, eog


# --- the state machine ---
@pytest.mark.parametrize("pending,expected", [
    (b"", None), (b"\xc3", (1, 0x80, 0xBF)), (b"\xe0", (2, 0xA0, 0xBF)), (b"\xed", (2, 0x80, 0x9F)),
    (b"\xe4", (2, 0x80, 0xBF)), (b"\xe4\xb8", (1, 0x80, 0xBF)), (b"\xf0", (3, 0x90, 0xBF)),
    (b"\xf4", (3, 0x80, 0x8F)), (b"\xf0\x90", (2, 0x80, 0xBF)), (b"\xf0\x90\x80", (1, 0x80, 0xBF)),
])
def test_state_after_pending_bytes(pending, expected):
    assert state_after(pending) == expected


@pytest.mark.parametrize("data", [
    b"", b"abc", b"\xe4", b"\xe4\xb8", b"\xe4\xb8\xad", b"a\xe0\xa0", b"\xed\x9f", b"\xf4\x8f\xbf", b"\xf0\x90",
    b"\xc0", b"\xc1\x80", b"\xf5", b"\xff", b"\x80", b"a\x80", b"\xe0\x80", b"\xed\xa0", b"\xf0\x80",
    b"\xf4\x90", b"\xe4a", b"\xe4\xb8\xad\xad", b"\xf0\x90\x80\x80\x80",
])
def test_is_valid_prefix_matches_the_strict_decoder(data):
    assert is_valid_prefix(data) == strict_prefix_ok(data)


def test_is_valid_prefix_on_random_bytes():
    rng = random.Random(3)
    for _ in range(3000):
        data = bytes(rng.choice([0x41, 0x80, 0x9F, 0xA0, 0xBF, 0xC2, 0xE0, 0xE4, 0xED, 0xF0, 0xF4, 0xF5])
                     for _ in range(rng.randint(1, 5)))
        assert is_valid_prefix(data) == strict_prefix_ok(data), data


# --- the table ---
@pytest.mark.parametrize("seed", [0, 1])
def test_table_allows_exactly_the_valid_continuations(seed):
    pieces, eog = synthetic_vocab(seed)
    table = Utf8Table(pieces, eog)
    boundary = set(range(len(pieces))) - set(table.banned_at_boundary.tolist())
    assert boundary == reference_allowed(pieces, eog, b"")
    for pending in PENDING:
        allowed = table.allowed(state_after(pending))
        assert allowed is not None
        assert set(allowed.tolist()) == reference_allowed(pieces, eog, pending), pending


def test_second_byte_ranges_are_exact():
    pieces, eog = [bytes([b]) for b in range(256)], [False] * 256
    table = Utf8Table(pieces, eog)
    for lead, lo, hi in ((0xE0, 0xA0, 0xBF), (0xED, 0x80, 0x9F), (0xF0, 0x90, 0xBF), (0xF4, 0x80, 0x8F),
                         (0xE4, 0x80, 0xBF)):
        assert table.allowed(state_after(bytes([lead]))).tolist() == list(range(lo, hi + 1))
    assert set(table.banned_at_boundary.tolist()) == {*range(0x80, 0xC2), *range(0xF5, 0x100)}


def test_no_continuation_in_the_vocabulary_means_no_mask():
    table = Utf8Table([b"", b"a", b"\xe4", b" b"], [True, False, False, False])
    guard = Utf8Guard(table)
    guard.accept(2)  # <0xE4>: nothing in this vocabulary continues it
    logits = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    guard.apply(logits)
    assert logits.tolist() == [1.0, 2.0, 3.0, 4.0]  # never zero candidates


# --- the guard ---
def test_guard_follows_a_character_and_bans_eog_until_it_is_complete():
    pieces, eog = synthetic_vocab()
    guard = Utf8Guard(Utf8Table(pieces, eog))
    byte = {b: 3 + b for b in range(256)}  # token id of each byte token
    n = len(pieces)
    for step, (token, pending_after) in enumerate([(byte[0xE4], True), (byte[0xB8], True), (byte[0xAD], False)]):
        logits = np.zeros(n, dtype=np.float32)
        guard.apply(logits)
        if step == 0:
            assert logits[0] == 0 and logits[byte[0x80]] == -np.inf and logits[byte[0xC0]] == -np.inf
        else:
            assert logits[0] == -np.inf and logits[2] == -np.inf  # end of generation waits for the character
            assert logits[byte[0x41]] == -np.inf and logits[token] == 0
        guard.accept(token)
        assert (guard.state is not None) == pending_after


def test_guard_leaves_the_choice_to_the_chain_when_a_bias_bans_every_continuation():
    pieces, eog = [b"", b"a", b"\xe4", b"\xb8"], [True, False, False, False]
    guard = Utf8Guard(Utf8Table(pieces, eog))
    guard.accept(2)
    logits = np.array([1.0, 2.0, 3.0, -np.inf], dtype=np.float32)
    guard.apply(logits)
    assert logits.tolist() == [1.0, 2.0, 3.0, -np.inf]


def _random_walk(table: Utf8Table | None, pieces: list[bytes], eog: list[bool], seed: int) -> bytes:
    """Sample 60 tokens from random logits (with or without the guard); the bytes generated."""
    rng = np.random.default_rng(seed)
    guard = Utf8Guard(table) if table else None
    out = b""
    for _ in range(60):
        logits = rng.normal(size=len(pieces)).astype(np.float32)
        if guard:
            guard.apply(logits)
        p = np.exp(logits - logits.max())
        token = int(rng.choice(len(pieces), p=p / p.sum()))
        if eog[token]:
            break
        out += pieces[token]
        if guard:
            guard.accept(token)
    return out


def test_random_sampling_with_the_guard_is_always_valid_utf8():
    pieces, eog = synthetic_vocab()
    table = Utf8Table(pieces, eog)
    for seed in range(50):
        out = _random_walk(table, pieces, eog, seed)
        assert is_valid_prefix(out) and strict_prefix_ok(out), out
    # The same walk without the guard: invalid nearly every time, so the assertion above can fail.
    assert sum(not strict_prefix_ok(_random_walk(None, pieces, eog, seed)) for seed in range(50)) > 40


# --- real models ---
ZH_QUESTIONS = ["请用中文介绍一下北京。", "你好，你是谁？", "写一首关于春天的短诗。", "中国的四大发明是什么？"]
# Default sampling (temperature 0.3, repetition penalty 1.3, top-k 50, top-p 0.95) with several seeds, greedy
# with the same penalty, and temperature 1.5 over the whole vocabulary to provoke byte tokens. Measured without
# the mask on SmolLM2: greedy leaves U+FFFD in 1 of the 4 answers, temperature 1.5 in 2 of 8.
RUNS = [dict(temperature=0.0, max_tokens=200),
        *(dict(temperature=0.3, seed=seed, max_tokens=80) for seed in (1, 2)),
        *(dict(temperature=1.5, top_k=0, top_p=1.0, seed=seed, max_tokens=60) for seed in (1, 2))]
TINY_RUNS = [dict(temperature=temperature, seed=seed, max_tokens=48) for temperature in (0.3, 1.5) for seed in (1, 2, 3)]


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    with Engine(smollm2_gguf, EngineSettings(n_ctx=2048, n_parallel=4, n_threads=2)) as engine:
        yield engine


@pytest.fixture(scope="module")
def tiny(tiny_zh_gguf):
    with Engine(tiny_zh_gguf, EngineSettings(n_ctx=1024, n_parallel=4, n_threads=2)) as engine:
        yield engine


def _smollm2_prompt(engine: Engine, question: str) -> list[int]:
    return engine.tokenize(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n", add_bos=False)


def _tiny_prompt(engine: Engine, question: str) -> list[int]:
    return engine.tokenize(f"<s>Human: {question}\n</s><s>Assistant: ", add_bos=False)


def _answers(engine: Engine, prompts: list[list[int]], params: list[SamplingParams]):
    """(text, bytes of all generated tokens, Finished) of each prompt/params pair, run concurrently."""
    streams = [engine.submit(p, s) for p, s in zip(prompts, params, strict=True)]
    out = []
    for stream in streams:
        text, finished = stream.text()
        assert finished.reason in ("stop", "length"), finished.error
        raw = b"".join(engine.piece(t) for t in finished.tokens)  # end-of-generation pieces are empty
        out.append((text, raw, finished))
    return out


def _invalid(answers) -> list[tuple[str, bytes]]:
    bad = []
    for text, raw, _ in answers:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            bad.append((text, raw))
            continue
        if "\ufffd" in text:
            bad.append((text, raw))
    return bad


def _zh_runs(engine: Engine, prompt_fn, runs: list[dict]):
    prompts, params = [], []
    for run, question in itertools.product(runs, ZH_QUESTIONS):
        prompts.append(prompt_fn(engine, question))
        params.append(SamplingParams(**run))
    return _answers(engine, prompts, params)


def _split_characters(engine: Engine, answers) -> int:
    """Generated tokens whose piece is not whole characters on its own."""
    count = 0
    for _, _, finished in answers:
        for token in finished.tokens:
            try:
                engine.piece(token).decode("utf-8")
            except UnicodeDecodeError:
                count += 1
    return count


@pytest.mark.slow
def test_smollm2_chinese_answers_are_valid_utf8(smollm2):
    """SmolLM2's byte-level BPE splits most Chinese characters over tokens: no U+FFFD in any text, and the
    bytes of all generated tokens decode strictly."""
    answers = _zh_runs(smollm2, _smollm2_prompt, RUNS)
    assert not _invalid(answers)
    assert _split_characters(smollm2, answers) > 0  # the mask had work to do


def test_byte_fallback_chinese_answers_are_valid_utf8(tiny):
    """The tiny Atom-style model: SentencePiece with byte fallback, random weights, so byte tokens abound."""
    answers = _zh_runs(tiny, _tiny_prompt, TINY_RUNS)
    assert not _invalid(answers)
    assert _split_characters(tiny, answers) > 0


def test_without_the_guard_the_same_runs_break_utf8(tiny):
    """The control for the test above: llama.cpp's sampling alone leaves invalid UTF-8 in these answers."""
    backend = tiny._scheduler.backend
    backend.utf8_guard = False
    try:
        answers = _zh_runs(tiny, _tiny_prompt, TINY_RUNS)
    finally:
        backend.utf8_guard = True
    assert _invalid(answers)


def test_max_tokens_still_finishes_the_last_character(tiny):
    """max_tokens ends generation, but up to MAX_EXTRA_TOKENS_FOR_CHARACTER more tokens finish a character:
    with the mask they always can, so no answer ends in U+FFFD."""
    prompts, params = [], []
    for seed, max_tokens in itertools.product(range(12), (1, 2, 3)):
        prompts.append(_tiny_prompt(tiny, ZH_QUESTIONS[seed % len(ZH_QUESTIONS)]))
        params.append(SamplingParams(temperature=1.5, seed=seed, max_tokens=max_tokens))
    answers = _answers(tiny, prompts, params)
    assert not _invalid(answers)
    extra = [f.completion_tokens - p.max_tokens for (_, _, f), p in zip(answers, params, strict=True)]
    assert max(extra) > 0  # some answer needed the extra tokens
    assert max(extra) < MAX_EXTRA_TOKENS_FOR_CHARACTER


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.0, 0.3])
def test_same_tokens_as_llama_cpp_where_no_character_is_pending(smollm2, temperature):
    """English answers never hold a pending character: the guarded engine and llama.cpp's sampling alone pick
    the same tokens (greedy, and seeded default sampling)."""
    questions = ["What is the capital of France?", "Write a haiku about autumn.", "List three prime numbers."]
    prompts = [_smollm2_prompt(smollm2, q) for q in questions]
    params = [SamplingParams(temperature=temperature, seed=11, max_tokens=40) for _ in questions]
    backend = smollm2._scheduler.backend
    forget_cache = smollm2._scheduler.between_steps  # both runs evaluate the whole prompts
    forget_cache(lambda: None)
    guarded = _answers(smollm2, prompts, params)
    backend.utf8_guard = False
    try:
        forget_cache(lambda: None)
        plain = _answers(smollm2, prompts, params)
    finally:
        backend.utf8_guard = True
    for (_, _, a), (_, _, b) in zip(guarded, plain, strict=True):
        assert not _ever_pending(smollm2, b.tokens)  # the premise: the mask never had to act
        assert a.tokens == b.tokens


def _ever_pending(engine: Engine, tokens) -> bool:
    """Whether the bytes generated so far ended inside a character after some token."""
    data = b""
    for token in tokens:
        data += engine.piece(token)
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return True
    return False
