"""Scheduler logic with a fake at the engine boundary (the llama.cpp backend): continuous batching, chunked
prefill, slot choice for prefix reuse, cancellation and decode failures. The real backend is covered by
test_engine*.py; here every batch the scheduler builds is recorded and checked."""

from __future__ import annotations

import json
import threading
import time

from lcpp_zh.runtime import scheduler as scheduler_module
from lcpp_zh.runtime.sampling import SamplingParams
from lcpp_zh.runtime.scheduler import Scheduler
from lcpp_zh.runtime.slots import Request
from lcpp_zh.runtime.stream import Finished, Stream, TextDelta

EOS = 0


class FakeBatch:
    def __init__(self, capacity: int) -> None:
        self.capacity, self.items = capacity, []

    @property
    def n(self) -> int:
        return len(self.items)

    def clear(self) -> None:
        self.items = []

    def add(self, token: int, pos: int, seq_id: int, logits: bool) -> int:
        assert self.n < self.capacity
        self.items.append((token, pos, seq_id, logits))
        return self.n - 1


class FakeBackend:
    """Samples token 100+seq_id+step (or EOS after `eos_after` tokens); pieces are 'tN '."""

    def __init__(self, eos_after: int = 1000, fail_decode: bool = False) -> None:
        self.batches: list[list[tuple[int, int, int, bool]]] = []
        self.kv: dict[int, list[tuple[int, int]]] = {}
        self.eos_after, self.fail_decode = eos_after, fail_decode
        self.counts: dict[int, int] = {}

    def new_batch(self, capacity: int) -> FakeBatch:
        self.batch = FakeBatch(capacity)
        return self.batch

    def decode(self, batch: FakeBatch) -> int:
        self.batches.append(list(batch.items))
        if self.fail_decode:
            return 1
        for token, pos, seq, _ in batch.items:
            cells = self.kv.setdefault(seq, [])
            assert pos == len(cells), f"seq {seq}: position {pos} after {len(cells)} cells"
            cells.append((pos, token))
        return 0

    def seq_rm(self, seq_id: int, p0: int, p1: int = -1) -> bool:
        cells = self.kv.setdefault(seq_id, [])
        self.kv[seq_id] = [] if p0 < 0 else cells[:p0]
        return True

    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        assert p0 == 0 and not self.kv.get(dst), "cells are shared into an emptied sequence"
        self.kv[dst] = list(self.kv.get(src, []))[:p1]

    def state_save(self, seq_id: int) -> bytes:
        return json.dumps(self.kv.get(seq_id, [])).encode()

    def state_load(self, seq_id: int, data: bytes) -> bool:
        assert not self.kv.get(seq_id)
        self.kv[seq_id] = [tuple(cell) for cell in json.loads(data)]
        return True

    def make_sampler(self, params, prompt):
        return {"n": 0}

    def sample(self, sampler, index: int) -> int:
        token, _pos, seq, logits = self.batch.items[index]
        assert logits, "sampled from a position without logits"
        sampler["n"] += 1
        return EOS if sampler["n"] > self.eos_after else 100 + seq * 10 + sampler["n"]

    def free_sampler(self, sampler) -> None:
        sampler["freed"] = True

    def is_eog(self, token: int) -> bool:
        return token == EOS

    def piece(self, token: int) -> bytes:
        return f"t{token} ".encode()


def _request(tokens, max_tokens=5, key=None) -> Request:
    return Request(list(tokens), SamplingParams(max_tokens=max_tokens), Stream(), key)


def _run_until_idle(sched: Scheduler, limit: int = 200) -> None:
    for _ in range(limit):
        sched._admit()
        if not any(s.busy for s in sched.slots) and not sched.queue:
            return
        sched.step()
    raise AssertionError("scheduler did not finish")


def _events(req: Request):
    out = []
    while req.stream._events:
        out.append(req.stream._events.popleft())
    return out


def test_long_prompt_is_prefilled_in_chunks_while_others_decode():
    backend = FakeBackend()
    sched = Scheduler(backend, n_slots=2, n_ctx_slot=1000, n_batch=16)
    short = _request(range(1, 5), max_tokens=10)
    sched.submit(short)
    sched._admit()
    sched.step()  # short prompt evaluated, first token sampled
    long = _request(range(1, 41), max_tokens=3)
    sched.submit(long)
    sched._admit()
    for _ in range(3):
        sched.step()
    # Each of these batches carries one token for the generating slot and a chunk of at most 15 prompt tokens.
    for batch in backend.batches[1:4]:
        seqs = [item[2] for item in batch]
        assert seqs.count(0) == 1 and 0 < seqs.count(1) <= 15 and len(batch) <= 16
    _run_until_idle(sched)
    assert [e.reason for e in _events(long) if isinstance(e, Finished)] == ["length"]


def test_request_joins_the_running_batch():
    backend = FakeBackend()
    sched = Scheduler(backend, n_slots=2, n_ctx_slot=100, n_batch=64)
    a, b = _request([1, 2, 3], 6), _request([4, 5], 6)
    sched.submit(a)
    sched._admit()
    sched.step()
    sched.step()
    sched.submit(b)
    sched._admit()
    sched.step()
    assert {item[2] for item in backend.batches[-1]} == {0, 1}


def test_text_and_finish_events():
    backend = FakeBackend(eos_after=3)
    sched = Scheduler(backend, n_slots=1, n_ctx_slot=100, n_batch=64)
    req = _request([1, 2, 3], max_tokens=10)
    sched.submit(req)
    _run_until_idle(sched)
    events = _events(req)
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "t101 t102 t103 "
    finished = events[-1]
    assert finished.reason == "stop" and finished.completion_tokens == 4 and finished.tokens[-1] == EOS


def test_slot_with_longest_prefix_is_reused():
    backend = FakeBackend()
    sched = Scheduler(backend, n_slots=3, n_ctx_slot=100, n_batch=64)
    for prompt in ([1, 2, 3, 4], [7, 8, 9], [1, 2, 5]):
        req = _request(prompt, 2)
        sched.submit(req)
        _run_until_idle(sched)
    # [7, 8, 9] went to the empty slot 1 (not over slot 0's cache) and generated 111, 112; 111 is in its KV.
    assert [t for _, t in backend.kv[1]] == [7, 8, 9, 111]
    n_batches = len(backend.batches)
    follow = _request([7, 8, 9, 111, 42], 2)  # the second conversation, continued
    sched.submit(follow)
    _run_until_idle(sched)
    assert _events(follow)[-1].cached_tokens == 4
    assert backend.batches[n_batches] == [(42, 4, 1, True)]  # only the new token is evaluated


def test_identical_prompt_still_evaluates_its_last_token():
    backend = FakeBackend()
    sched = Scheduler(backend, n_slots=1, n_ctx_slot=100, n_batch=64)
    for _ in range(2):
        req = _request([5, 6, 7], 1)
        sched.submit(req)
        _run_until_idle(sched)
    assert _events(req)[-1].cached_tokens == 2
    assert backend.batches[-1] == [(7, 2, 0, True)]


def test_cancel_in_queue_and_while_running():
    backend = FakeBackend()
    sched = Scheduler(backend, n_slots=1, n_ctx_slot=100, n_batch=64)
    running, waiting = _request([1, 2], 50), _request([3, 4], 50)
    sched.submit(running)
    sched.submit(waiting)
    sched._admit()
    sched.step()
    waiting.stream.cancel()
    running.stream.cancel()
    _run_until_idle(sched)
    assert _events(running)[-1].reason == "cancelled"
    assert _events(waiting)[-1].reason == "cancelled"


def test_decode_failure_ends_the_requests_with_an_error():
    backend = FakeBackend(fail_decode=True)
    sched = Scheduler(backend, n_slots=1, n_ctx_slot=100, n_batch=64)
    req = _request([1, 2, 3], 5)
    sched.submit(req)
    _run_until_idle(sched)
    finished = _events(req)[-1]
    assert finished.reason == "error" and "KV cache" in finished.error
    assert backend.kv[0] == []


def _run_in_thread(sched: Scheduler) -> threading.Thread:
    thread = threading.Thread(target=sched.run, daemon=True)
    thread.start()
    return thread


def test_a_burst_from_idle_starts_in_one_batch(monkeypatch):
    """Requests arriving a moment apart while the engine is idle are prefilled together, not one step apart."""
    monkeypatch.setattr(scheduler_module, "GATHER_QUIET_S", 1.0)
    monkeypatch.setattr(scheduler_module, "GATHER_MAX_S", 10.0)
    backend = FakeBackend()
    sched = Scheduler(backend, n_slots=4, n_ctx_slot=100, n_batch=64)
    thread = _run_in_thread(sched)
    reqs = [_request([1 + i, 2, 3], 2) for i in range(3)]
    for req in reqs:
        sched.submit(req)
        time.sleep(0.05)  # far below the quiet time: the burst goes on
    for req in reqs:
        assert req.stream.text()[1].reason == "length"
    sched.close()
    thread.join(5)
    assert {item[2] for item in backend.batches[0]} == {0, 1, 2}


def test_a_burst_that_fills_every_slot_does_not_wait(monkeypatch):
    monkeypatch.setattr(scheduler_module, "GATHER_QUIET_S", 30.0)
    monkeypatch.setattr(scheduler_module, "GATHER_MAX_S", 60.0)
    backend = FakeBackend()
    sched = Scheduler(backend, n_slots=2, n_ctx_slot=100, n_batch=64)
    thread = _run_in_thread(sched)
    start = time.monotonic()
    reqs = [_request([1, 2], 2), _request([3, 4], 2)]
    for req in reqs:
        sched.submit(req)
    for req in reqs:
        req.stream.text()
    assert time.monotonic() - start < 10.0  # not the 30 s quiet time: no slot was left to fill
    sched.close()
    thread.join(5)
