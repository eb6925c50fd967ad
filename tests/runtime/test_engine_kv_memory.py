"""The engine's shared KV cache on the real llama.cpp (SmolLM2): one request may use more than ctx/parallel,
a request larger than the cache is refused, long requests that cannot all fit wait instead of failing,
quantized KV with flash attention, a shared system prompt held once, and the RAM cache giving the same greedy
answer as recomputing."""

from __future__ import annotations

import pytest

from lcpp_zh.errors import EngineError
from lcpp_zh.runtime.engine import Engine
from lcpp_zh.runtime.offload import read_model_sizes
from lcpp_zh.runtime.sampling import SamplingParams
from lcpp_zh.runtime.settings import EngineSettings

GREEDY = SamplingParams(temperature=0, max_tokens=8)


def _prompt(engine: Engine, n: int, seed: str = "The history of the city") -> list[int]:
    """A natural-language prompt of exactly n tokens."""
    text = " ".join(f"{seed} part {i} tells of rivers, bridges and markets." for i in range(n // 8 + 4))
    return engine.tokenize(text, add_bos=engine.add_bos)[:n]


def test_one_request_uses_more_than_its_share_and_an_oversized_one_is_refused(smollm2_gguf):
    with Engine(smollm2_gguf, EngineSettings(n_ctx=1024, n_parallel=4, n_threads=1)) as engine:
        assert engine.n_ctx_slot == 1024
        text, finished = engine.generate(_prompt(engine, 700), GREEDY)  # 700 > 1024 / 4
        assert finished.reason == "length" and finished.completion_tokens == 8 and text.strip()
        with pytest.raises(EngineError, match="does not fit"):
            engine.submit(_prompt(engine, 1100), GREEDY)


def test_long_requests_that_cannot_all_fit_wait_rather_than_fail(smollm2_gguf):
    with Engine(smollm2_gguf, EngineSettings(n_ctx=1024, n_parallel=3, n_threads=1, cache_ram_mb=0)) as engine:
        prompts = [_prompt(engine, 450, seed) for seed in ("A tale of rivers", "Old maps", "Summer rain")]
        alone = [engine.generate(p, GREEDY)[1].tokens for p in prompts]
        streams = [engine.submit(p, GREEDY) for p in prompts]  # 3 x 458 tokens in 1024 cells
        results = [s.text()[1] for s in streams]
        assert [r.reason for r in results] == ["length"] * 3
        # Each waited its turn and gave the answer it gives alone (greedy).
        assert [r.tokens for r in results] == alone
        assert engine.stats()["kv_cells_used"] <= 1024


def test_quantized_kv_with_flash_attention(smollm2_gguf):
    prompt_text = "The capital of France is"
    with Engine(smollm2_gguf, EngineSettings(n_ctx=512, n_threads=1)) as engine:
        prompt = engine.tokenize(prompt_text, add_bos=engine.add_bos)
        reference = engine.generate(prompt, GREEDY)[1].tokens
    settings = EngineSettings(n_ctx=512, n_threads=1, cache_type_k="q8_0", cache_type_v="q8_0", flash_attn="on")
    with Engine(smollm2_gguf, settings) as engine:
        text, finished = engine.generate(prompt, GREEDY)
    assert finished.completion_tokens == 8 and text.strip()
    assert finished.tokens[0] == reference[0]  # q8_0 cells change logits a little, not the obvious next word
    with pytest.raises(EngineError, match="needs flash attention"):
        Engine(smollm2_gguf, settings.replace(flash_attn="off"))
    f16, q8 = read_model_sizes(smollm2_gguf), read_model_sizes(smollm2_gguf, ("q8_0", "q8_0"))
    assert q8.kv_bytes_per_token_layer == round(f16.kv_bytes_per_token_layer * 34 / 64)


def test_a_shared_system_prompt_is_held_once(smollm2_gguf):
    with Engine(smollm2_gguf, EngineSettings(n_ctx=2048, n_parallel=4, n_threads=1)) as engine:
        system = _prompt(engine, 400, "You are a helpful assistant")
        questions = [engine.tokenize(f" Question {i}: name a colour.", add_bos=False) for i in range(4)]
        first = engine.generate(system + questions[0], GREEDY)[1]
        params = SamplingParams(temperature=0, max_tokens=64)
        streams = [engine.submit(system + q, params) for q in questions[1:]]
        results = [s.text()[1] for s in streams]
        assert first.cached_tokens == 0
        assert all(r.cached_tokens >= 400 for r in results), [r.cached_tokens for r in results]
        stats = engine.stats()
        # One continues in the first conversation's slot, the two others share its cells.
        assert stats["shared_tokens"] >= 2 * 400
        # Four conversations of 400 + ~10 + up to 64 tokens: with the system prompt once, well under 4 x 400.
        assert stats["kv_cells_used"] < 400 + 4 * 90, stats


def test_ram_cache_restores_a_conversation_with_the_same_answer(smollm2_gguf):
    def conversation(cache_ram_mb: int):
        settings = EngineSettings(n_ctx=1024, n_parallel=1, n_threads=1, cache_ram_mb=cache_ram_mb)
        with Engine(smollm2_gguf, settings) as engine:
            a = _prompt(engine, 300, "A long letter")
            first = engine.generate(a, GREEDY)[1]
            engine.generate(_prompt(engine, 300, "Another story"), GREEDY)  # takes the only slot
            follow = a + list(first.tokens) + engine.tokenize(" And then", add_bos=False)
            again = engine.generate(follow, GREEDY)[1]
            return again, engine.stats()

    restored, stats = conversation(64)
    recomputed, _ = conversation(0)
    assert stats["prompt_cache_restores"] == 1 and restored.cached_tokens >= 300
    assert recomputed.cached_tokens == 0
    assert restored.tokens == recomputed.tokens
    assert 0 < stats["prompt_cache_bytes"] <= 64 << 20


def test_many_conversations_stay_within_the_ram_bound(smollm2_gguf):
    # SmolLM2 keeps ~23 KB of KV per token: 100-token conversations are ~2.3 MB each, so 4 MB holds one.
    settings = EngineSettings(n_ctx=512, n_parallel=1, n_threads=1, cache_ram_mb=4)
    with Engine(smollm2_gguf, settings) as engine:
        for i in range(4):
            engine.generate(_prompt(engine, 100, f"Conversation {i}"), SamplingParams(temperature=0, max_tokens=2))
        stats = engine.stats()
    assert stats["prompt_cache_saves"] == 3 and stats["prompt_cache_evictions"] >= 2
    assert 0 < stats["prompt_cache_bytes"] <= 4 << 20 and stats["prompt_cache_entries"] == 1
