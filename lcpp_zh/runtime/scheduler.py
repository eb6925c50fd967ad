"""Continuous batching over N sequence slots: the loop that the engine thread runs.

Each step builds one batch: one token for every slot that is generating, then prompt chunks of the
slots that are prefilling, up to n_batch tokens, so a long prompt never stalls the others. New requests
join at the next step, on the idle slot whose cached tokens share the longest prefix with the prompt.
The backend (llama.cpp or a fake in tests) is injected; this module never imports llama_cpp.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from lcpp_zh.errors import EngineError
from lcpp_zh.runtime.slots import Request, Slot, check_request, common_prefix
from lcpp_zh.runtime.stream import Finished

logger = logging.getLogger(__name__)


# How long an idle engine waits for more of a burst of requests (see Scheduler._gather_burst).
GATHER_QUIET_S = 0.003
GATHER_MAX_S = 0.03


class QueueFull(EngineError):
    """Every slot is busy and the waiting queue is full (a server answers 503)."""


class Backend(Protocol):
    """What the scheduler needs from llama.cpp."""

    def new_batch(self, capacity: int) -> Any: ...
    def decode(self, batch: Any) -> int: ...
    def seq_rm(self, seq_id: int, p0: int, p1: int = -1) -> bool: ...
    def make_sampler(self, params: Any, prompt: list[int]) -> Any: ...
    def sample(self, sampler: Any, index: int) -> int: ...
    def free_sampler(self, sampler: Any) -> None: ...
    def is_eog(self, token: int) -> bool: ...
    def piece(self, token: int) -> bytes: ...


def slot_score(slot: Slot, req: Request) -> tuple[int, int, int, int, float]:
    """How well an idle slot suits a request (highest wins).

    The same conversation (cache key) first; another keyed conversation's cache last. Then, as llama-server
    does, a slot whose cache covers more than half of the prompt, the longest such prefix first; otherwise
    an empty slot, then the least recently used one.
    """
    key_match = int(req.cache_key is not None and slot.cache_key == req.cache_key)
    others = int(bool(slot.tokens) and slot.cache_key is not None and not key_match)
    shared = common_prefix(slot.tokens, req.tokens)
    reuse = shared if 2 * shared > len(req.tokens) else 0
    return (key_match, -others, reuse, int(not slot.tokens), -slot.last_used)


class Scheduler:
    """Owns the slots and the waiting queue; `run()` is the engine thread's body."""

    def __init__(self, backend: Backend, *, n_slots: int, n_ctx_slot: int, n_batch: int,
                 max_queue: int = 64) -> None:
        self.backend = backend
        self.slots = [Slot(i, n_ctx_slot) for i in range(n_slots)]
        self.n_ctx_slot = n_ctx_slot
        self.n_batch = n_batch
        self.max_queue = max_queue
        self.queue: collections.deque[Request] = collections.deque()
        self.cond = threading.Condition()
        self.closing = False
        self.batch = backend.new_batch(n_batch + n_slots)
        self.totals = collections.Counter()
        # Held by the engine thread for each admit+step; between_steps() takes it to change the context.
        self.step_lock = threading.Lock()
        # Called by the engine thread after each step (and once at the end): the runner process sends the
        # step's events to the server in one message.
        self.after_step: Callable[[], None] | None = None

    # --- any thread ---
    def submit(self, req: Request) -> None:
        check_request(req.tokens, req.params, n_ctx_slot=self.n_ctx_slot)
        with self.cond:
            if self.closing:
                raise EngineError("the engine is closed")
            idle = sum(not s.busy for s in self.slots)
            if len(self.queue) >= self.max_queue + idle:
                raise QueueFull(f"server busy: {len(self.queue)} requests waiting; retry later")
            self.queue.append(req)
            self.totals["requests"] += 1
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify_all()

    def between_steps(self, change: Callable[[], None]) -> None:
        """Run `change` (e.g. new LoRA scales) while no batch is decoding, then forget every cached prefix:
        KV entries computed before the change no longer match. Running requests go on."""
        with self.step_lock:
            change()
            for slot in self.slots:
                slot.stale = slot.busy
                if not slot.busy:
                    self.backend.seq_rm(slot.seq_id, -1, -1)
                    slot.tokens = []

    def stats(self) -> dict[str, int]:
        with self.cond:
            return {"slots_total": len(self.slots), "slots_busy": sum(s.busy for s in self.slots),
                    "queue_depth": len(self.queue), **self.totals}

    # --- engine thread ---
    def run(self) -> None:
        try:
            while self._wait_for_work():
                with self.step_lock:
                    self._admit()
                    self.step()
                if self.after_step is not None:
                    self.after_step()
        except BaseException as exc:  # noqa: BLE001 - every waiting client must hear about it
            logger.exception("engine loop failed")
            self._fail_all(f"engine failure: {exc}")
            raise
        finally:
            self._fail_all("the engine was closed")
            if self.after_step is not None:
                self.after_step()

    def _wait_for_work(self) -> bool:
        with self.cond:
            idle = not any(s.busy for s in self.slots)
            while not self.closing and not self.queue and idle:
                self.cond.wait()
            if idle and not self.closing:
                self._gather_burst()
            return not self.closing

    def _gather_burst(self) -> None:
        """Starting from idle, let the rest of a burst of requests arrive before the first step (called
        with self.cond held).

        Clients often send several requests at once, and their HTTP handling takes a moment each. Once
        the first step runs, it holds both cores and the others only join at the next one, a whole prompt
        evaluation later. Waiting while requests keep coming (GATHER_QUIET_S apart, GATHER_MAX_S in all)
        puts them in one batch; a lone request waits GATHER_QUIET_S.
        """
        deadline = time.monotonic() + GATHER_MAX_S
        seen = len(self.queue)
        while not self.closing and seen < len(self.slots):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.cond.wait(min(GATHER_QUIET_S, remaining))
            if len(self.queue) == seen:
                return
            seen = len(self.queue)

    def _admit(self) -> None:
        """Move waiting requests onto idle slots, each on the slot with the longest shared prefix."""
        while True:
            with self.cond:
                idle = [s for s in self.slots if not s.busy]
                if not self.queue or not idle:
                    return
                req = self.queue.popleft()
            if req.stream.cancelled.is_set():
                req.stream.put(Finished("cancelled", len(req.tokens), 0, 0, 0.0, 0.0))
                continue
            self._start(req, idle)

    def _start(self, req: Request, idle: list[Slot]) -> None:
        slot = max(idle, key=lambda s: slot_score(s, req))
        # At least the last prompt token is evaluated again: its logits give the first sampled token.
        keep = min(common_prefix(slot.tokens, req.tokens), len(req.tokens) - 1)
        if not self.backend.seq_rm(slot.seq_id, keep, -1):
            self.backend.seq_rm(slot.seq_id, -1, -1)
            slot.tokens, keep = [], 0
        try:
            sampler = self.backend.make_sampler(req.params, req.tokens)
        except EngineError as exc:
            req.stream.put(Finished("error", len(req.tokens), 0, 0, 0.0, 0.0, error=str(exc)))
            return
        slot.start(req, keep, sampler, self.backend.piece)
        self.totals["prompt_tokens"] += len(req.tokens)
        self.totals["cached_tokens"] += keep
        logger.debug("slot %d: %d prompt tokens, %d cached", slot.seq_id, len(req.tokens), keep)

    def step(self) -> None:
        """One llama_decode over all busy slots, then sampling for those that have logits."""
        for slot in self.slots:
            if slot.busy and slot.req.stream.cancelled.is_set():
                self._finish(slot, "cancelled")
        batch, plan = self._build_batch()
        if not plan:
            return
        rc = self.backend.decode(batch)
        self.totals["decode_calls"] += 1
        if rc != 0:
            self._decode_failed(rc, plan)
            return
        for slot, added, index in plan:
            slot.tokens.extend(added)
            if index is None:
                continue
            try:
                token = self.backend.sample(slot.sampler, index)
            except EngineError as exc:  # e.g. a grammar that allows no token: this request ends, others go on
                logger.info("slot %d: %s", slot.seq_id, exc)
                self._finish(slot, "error", str(exc))
                continue
            self.totals["generated_tokens"] += 1
            if slot.on_token(token, self.backend.is_eog(token)) is not None:
                self._release(slot)

    def _build_batch(self) -> tuple[Any, list[tuple[Slot, list[int], int | None]]]:
        batch = self.batch
        batch.clear()
        plan: list[tuple[Slot, list[int], int | None]] = []
        for slot in self.slots:
            if slot.busy and slot.next_token is not None:
                token, slot.next_token = slot.next_token, None
                index = batch.add(token, len(slot.tokens), slot.seq_id, True)
                plan.append((slot, [token], index))
        for slot in self.slots:
            room = self.n_batch - batch.n
            if room <= 0:
                break
            if not slot.prefilling:
                continue
            chunk, slot.pending = slot.pending[:room], slot.pending[room:]
            pos0 = len(slot.tokens)
            index = None
            for i, token in enumerate(chunk):
                last = not slot.pending and i == len(chunk) - 1
                j = batch.add(token, pos0 + i, slot.seq_id, last)
                index = j if last else index
            plan.append((slot, chunk, index))
        return batch, plan

    def _decode_failed(self, rc: int, plan: list[tuple[Slot, list[int], int | None]]) -> None:
        # rc 1: no room in the KV cache; anything else is a llama.cpp error. Roll the batch back.
        message = ("the KV cache has no room for this batch" if rc == 1 else f"llama_decode failed ({rc})")
        logger.error("%s", message)
        for slot, _added, _index in plan:
            self.backend.seq_rm(slot.seq_id, len(slot.tokens), -1)
            if slot.busy:
                self._finish(slot, "error", message)

    def _finish(self, slot: Slot, reason: str, error: str | None = None) -> None:
        slot.finish(reason, error)
        self._release(slot)

    def _release(self, slot: Slot) -> None:
        if slot.sampler is not None:
            self.backend.free_sampler(slot.sampler)
            slot.sampler = None
        if slot.stale:  # its cache mixes KV from before and after a context change
            self.backend.seq_rm(slot.seq_id, -1, -1)
            slot.tokens, slot.stale = [], False
        slot.last_used = time.perf_counter()

    def _fail_all(self, message: str) -> None:
        with self.cond:
            waiting, self.queue = list(self.queue), collections.deque()
        for req in waiting:
            req.stream.put(Finished("error", len(req.tokens), 0, 0, 0.0, 0.0, error=message))
        for slot in self.slots:
            if slot.busy:
                self._finish(slot, "error", message)
