"""The engine on real llama.cpp with SmolLM2-135M-Instruct: greedy output equal to llama-cpp-python's own
Llama, batched slots equal to single runs, stop strings, max_tokens, cancel, errors, async streams."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from lcpp_zh.errors import EngineError, ModelError
from lcpp_zh.runtime.engine import Engine, Finished, QueueFull, TextDelta
from lcpp_zh.runtime.sampling import SamplingParams
from lcpp_zh.runtime.settings import EngineSettings

GREEDY = SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=32)
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]


@pytest.fixture(scope="module")
def engine(smollm2_gguf):
    with Engine(smollm2_gguf, EngineSettings(n_ctx=2048, n_parallel=3, n_threads=2)) as eng:
        yield eng


def _reference_completion(path, prompt: str, n: int) -> str:
    """llama-cpp-python's high-level Llama, greedy: an independent decoding loop over the same GGUF."""
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=512, n_threads=2, verbose=False,
                flash_attn=True)  # llama.cpp's default (auto) turns it on for CPUs, as in our engine
    try:
        out = llm.create_completion(prompt, max_tokens=n, temperature=0.0, repeat_penalty=1.0, top_k=1)
        return out["choices"][0]["text"]
    finally:
        llm.close()


def test_greedy_matches_llama_cpp_python(engine, smollm2_gguf):
    tokens = engine.tokenize(PROMPTS[0], add_bos=engine.add_bos)
    text, finished = engine.generate(tokens, GREEDY)
    assert finished.reason == "length" and finished.completion_tokens == 32
    assert text == _reference_completion(smollm2_gguf, PROMPTS[0], 32)


def test_batched_slots_equal_single_runs(engine):
    prompts = [engine.tokenize(p, add_bos=engine.add_bos) for p in PROMPTS]
    alone = [engine.generate(p, GREEDY)[0] for p in prompts]
    streams = [engine.submit(p, GREEDY) for p in prompts]  # three slots decode together
    together = [s.text()[0] for s in streams]
    # Batch shape changes float rounding in ggml's kernels, so greedy paths may part late; a slot reading
    # another's KV cache or positions would go wrong from the first tokens.
    for a, b in zip(alone, together, strict=True):
        assert len(os.path.commonprefix([a, b])) >= min(40, len(a) // 2), (a, b)
    assert len(set(together)) == 3


def test_stream_events_and_counts(engine):
    stream = engine.submit(engine.tokenize(PROMPTS[1], add_bos=False), GREEDY.replace(max_tokens=10))
    events = list(stream)
    assert isinstance(events[-1], Finished) and all(isinstance(e, TextDelta) for e in events[:-1])
    assert sum(e.n_tokens for e in events[:-1]) <= 10 == events[-1].completion_tokens
    assert events[-1].ttft_s > 0 and events[-1].tokens_per_s > 0


def test_stop_string_never_leaks(engine):
    tokens = engine.tokenize(PROMPTS[2], add_bos=False)
    full, _ = engine.generate(tokens, GREEDY)
    words = full.split()
    stop = words[len(words) // 2]
    text, finished = engine.generate(tokens, GREEDY.replace(stop=[stop]))
    assert finished.reason == "stop" and finished.stop == stop
    assert stop not in text
    assert text == full[: full.index(stop)]


def test_cancel_frees_the_slot(engine):
    stream = engine.submit(engine.tokenize(PROMPTS[2], add_bos=False), GREEDY.replace(max_tokens=400))
    first = stream.get(timeout=60)
    assert isinstance(first, TextDelta)
    stream.cancel()
    events = list(stream)
    assert events[-1].reason == "cancelled" and events[-1].completion_tokens < 400
    assert engine.stats()["slots_busy"] == 0


def test_prompt_that_cannot_fit_is_refused(engine):
    with pytest.raises(EngineError, match="does not fit"):
        engine.submit([engine.bos_id] * engine.n_ctx_slot, GREEDY)
    with pytest.raises(EngineError, match="empty prompt"):
        engine.submit([], GREEDY)
    with pytest.raises(EngineError, match="token ids"):
        engine.submit([engine.n_vocab + 5], GREEDY)


def test_generation_stops_at_slot_context(smollm2_gguf):
    with Engine(smollm2_gguf, EngineSettings(n_ctx=64, n_parallel=1, n_threads=2)) as small:
        tokens = small.tokenize(PROMPTS[2], add_bos=False)
        _, finished = small.generate(tokens, GREEDY.replace(max_tokens=500))
        assert finished.reason == "length"
        # The last sampled token never needs a KV cell of its own.
        assert finished.prompt_tokens + finished.completion_tokens == small.n_ctx_slot + 1


def test_queue_full(smollm2_gguf):
    with Engine(smollm2_gguf, EngineSettings(n_ctx=256, n_parallel=1, n_threads=2, max_queue=1)) as eng:
        tokens = eng.tokenize(PROMPTS[0], add_bos=False)
        long = GREEDY.replace(max_tokens=200)
        streams = [eng.submit(tokens, long)]
        with pytest.raises(QueueFull):
            for _ in range(4):
                streams.append(eng.submit(tokens, long))
        for s in streams:
            s.cancel()
        assert all(s.text()[1].reason in ("cancelled", "length") for s in streams)


def test_async_iteration(engine):
    async def consume():
        stream = engine.submit(engine.tokenize(PROMPTS[0], add_bos=False), GREEDY.replace(max_tokens=8))
        return [ev async for ev in stream.aiter()]

    events = asyncio.run(consume())
    assert events[-1].reason == "length" and len(events) >= 2


def test_seeded_sampling_is_reproducible(engine):
    tokens = engine.tokenize(PROMPTS[2], add_bos=False)
    params = SamplingParams(temperature=0.9, seed=1234, max_tokens=24)
    assert engine.generate(tokens, params)[0] == engine.generate(tokens, params)[0]


def test_many_threads_submit_at_once(engine):
    tokens = engine.tokenize(PROMPTS[0], add_bos=False)
    results: list[str] = []

    def worker():
        results.append(engine.generate(tokens, GREEDY.replace(max_tokens=8))[0])

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 6 and len(set(results)) == 1


def test_bad_model_files(tmp_path):
    with pytest.raises(ModelError, match="no such model file"):
        Engine(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    with pytest.raises(ModelError, match="not a GGUF file"):
        Engine(junk)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    with pytest.raises(ModelError, match="could not load"):
        Engine(truncated)


def test_bad_sampling_settings():
    with pytest.raises(EngineError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(EngineError, match="temperature"):
        SamplingParams(temperature=-1)


def test_seed_defaults():
    """The seed's README settings for Chinese Llama 2 chat models."""
    p = SamplingParams()
    assert (p.temperature, p.top_p, p.top_k, p.repeat_penalty, p.max_tokens) == (0.3, 0.95, 50, 1.3, 512)


def test_embeddings_match_llama_cpp_python(smollm2_gguf):
    from llama_cpp import Llama

    texts = ["北京是中国的首都。", "The cat sat on the mat."]
    with Engine(smollm2_gguf, EngineSettings(n_ctx=512, n_parallel=1, n_threads=2, embeddings=True)) as eng:
        ours = eng.embed(texts)
    llm = Llama(str(smollm2_gguf), embedding=True, n_ctx=512, n_threads=2, verbose=False, pooling_type=1,
                flash_attn=True)
    try:
        ref = [llm.embed(t, normalize=False) for t in texts]
    finally:
        llm.close()
    assert len(ours[0]) == len(ref[0]) == 576
    for a, b in zip(ours, ref, strict=True):
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        cosine = dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)
        assert cosine > 0.9999
    assert ours[0] != ours[1]
