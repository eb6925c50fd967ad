"""The shared KV cache seen by the scheduler, with the fake backend of test_engine_scheduler: admission (a
request waits when the cache cannot hold it, in arrival order), pausing the newest request when running ones
outgrow the cache, cells shared between slots, the RAM prompt cache and its bound."""

from __future__ import annotations

import pytest
from test_engine_scheduler import FakeBackend, _events, _request, _run_until_idle

from lcpp_zh.errors import EngineError
from lcpp_zh.runtime.prompt_cache import CellLedger, PromptCache
from lcpp_zh.runtime.scheduler import Scheduler
from lcpp_zh.runtime.stream import Finished


def _finished(req) -> Finished:
    return [e for e in _events(req) if isinstance(e, Finished)][-1]


def _physical_cells(backend: FakeBackend) -> int:
    """Cells the fake holds: a shared prefix counts once (the same (pos, token) run from position 0)."""
    return len({(pos, tuple(t for _, t in cells[: pos + 1])) for cells in backend.kv.values() for pos, _ in cells})


def test_one_request_may_use_the_whole_cache():
    backend = FakeBackend()
    sched = Scheduler(backend, n_slots=4, n_ctx_slot=1000, n_ctx=1000, n_batch=64)
    req = _request(range(1, 701), max_tokens=5)  # far beyond 1000 / 4 slots
    sched.submit(req)
    _run_until_idle(sched)
    finished = _finished(req)
    assert finished.reason == "length" and finished.completion_tokens == 5


def test_a_request_larger_than_the_cache_is_refused():
    sched = Scheduler(FakeBackend(), n_slots=2, n_ctx_slot=4096, n_ctx=100, n_batch=64)
    assert sched.n_ctx_slot == 100
    with pytest.raises(EngineError, match="does not fit"):
        sched.submit(_request(range(1, 101)))


def test_requests_that_cannot_both_fit_wait_in_order():
    backend = FakeBackend()
    sched = Scheduler(backend, n_slots=3, n_ctx_slot=200, n_ctx=200, n_batch=32)
    first, second, small = (_request(range(1, 121), 10), _request(range(500, 620), 10), _request([9, 9], 3))
    for req in (first, second, small):
        sched.submit(req)
    sched._admit()
    # 120 + 120 prompt tokens cannot share 200 cells: the second waits, and the small one behind it too.
    assert [s.busy for s in sched.slots] == [True, False, False] and len(sched.queue) == 2
    peak = 0
    for _ in range(200):
        sched._admit()
        if not any(s.busy for s in sched.slots) and not sched.queue:
            break
        sched.step()
        peak = max(peak, sched.kv.ledger.used)
    assert peak <= 200
    assert [_finished(r).reason for r in (first, second, small)] == ["length"] * 3


def test_the_newest_request_pauses_when_running_ones_outgrow_the_cache():
    def run(n_ctx: int):
        backend = FakeBackend()
        sched = Scheduler(backend, n_slots=2, n_ctx_slot=n_ctx, n_ctx=n_ctx, n_batch=64)
        reqs = [_request(range(1, 41), 60), _request(range(100, 140), 60)]
        for req in reqs:
            sched.submit(req)
        for _ in range(500):
            sched._admit()
            if not any(s.busy for s in sched.slots) and not sched.queue:
                break
            sched.step()
            assert sched.kv.ledger.used <= n_ctx
        return [_finished(r) for r in reqs], sched.totals["paused"]

    # 2 x (40 prompt + 60 answer) = 200 tokens in 150 cells: both admitted, one must pause mid-answer.
    tight, paused = run(150)
    roomy, none = run(400)
    assert paused >= 1 and none == 0
    assert [f.tokens for f in tight] == [f.tokens for f in roomy]
    assert all(f.reason == "length" and f.completion_tokens == 60 for f in tight)


def test_a_prefix_in_another_slot_is_shared_not_recomputed():
    backend = FakeBackend()
    sched = Scheduler(backend, n_slots=2, n_ctx_slot=300, n_ctx=300, n_batch=256)
    system = list(range(1, 101))
    a = _request(system + [201, 202], 50)
    sched.submit(a)
    sched._admit()
    sched.step()  # a's prompt is in slot 0; a keeps generating
    b = _request(system + [301, 302, 303], 3)
    sched.submit(b)
    sched._admit()
    assert sched.slots[1].tokens == system and sched.totals["shared_tokens"] == 100
    # Only b's own tokens were evaluated for it, and the shared cells count once.
    evaluated_b = [item for item in backend.batches[-1] if item[2] == 1]
    sched.step()
    evaluated_b = [item for item in backend.batches[-1] if item[2] == 1]
    assert [item[0] for item in evaluated_b] == [301, 302, 303]
    assert sched.kv.ledger.used == 100 + 2 + 1 + 3 == _physical_cells(backend) - 0
    _run_until_idle(sched)
    assert _finished(b).cached_tokens == 100


def test_an_evicted_conversation_comes_back_from_ram():
    backend = FakeBackend()
    cache = PromptCache(limit_mb=1, min_tokens=8)
    sched = Scheduler(backend, n_slots=1, n_ctx_slot=100, n_batch=64, prompt_cache=cache)
    first = _request(range(1, 41), 4)
    sched.submit(first)
    _run_until_idle(sched)
    history = list(range(1, 41)) + list(_finished(first).tokens)
    other = _request(range(500, 530), 2)  # another conversation takes the only slot
    sched.submit(other)
    _run_until_idle(sched)
    assert cache.saves == 1 and [t for _, t in backend.kv[0]][:3] == [500, 501, 502]
    follow = _request(history + [77, 78], 3)
    n_batches = len(backend.batches)
    sched.submit(follow)
    _run_until_idle(sched)
    # The last answer token was sampled but never decoded: it is evaluated with the new ones.
    assert cache.restores == 1 and _finished(follow).cached_tokens == len(history) - 1
    assert [item[0] for item in backend.batches[n_batches]] == [history[-1], 77, 78]


def test_the_ram_cache_has_a_bound_and_evicts_the_oldest():
    cache = PromptCache(limit_mb=1, min_tokens=4)
    blob = bytes(400 * 1024)
    for i in range(10):
        assert cache.save([i] * 10, blob)
        assert cache.size <= cache.limit_bytes
    assert len(cache.entries) == 2 and cache.evictions == 8
    assert cache.find([9] * 10)[1] == 10 and cache.find([0] * 10) == (None, 0)
    assert not cache.save([1] * 10, bytes(2 << 20))  # larger than the whole cache
    # A longer state of a conversation replaces its shorter one; a state it already covers is not saved.
    cache.save([9] * 12, blob)
    assert [len(e.tokens) for e in cache.entries.values()] == [10, 12]
    assert not cache.wants([9] * 11)


def test_ledger_counts_shared_cells_once():
    ledger = CellLedger()
    ledger.append(0, 50)
    ledger.share(0, 1, 30)
    ledger.append(1, 5)
    assert ledger.used == 55 and ledger.used_by([1]) == 35
    ledger.truncate(0, 0)
    assert ledger.used == 35
    ledger.truncate(1, 10)
    assert ledger.used == 10
