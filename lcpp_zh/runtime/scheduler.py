"""Continuous batching over N sequence slots sharing one KV cache: the loop that the engine thread runs.

Each step builds one batch: one token for every slot that is generating, then prompt chunks of the slots
that are prefilling, up to n_batch tokens, so a long prompt never stalls the others. Any one request may use
the whole context (up to n_ctx_slot); a request joins when the cache can hold its prompt, in arrival order,
reusing the longest cached prefix of its slot, of another slot (shared cells) or of the RAM cache. When
running requests outgrow the cache, idle slots are evicted, then the newest request pauses until there
is room again. The backend (llama.cpp or a fake in tests) is injected; this module never imports llama_cpp.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from lcpp_zh.errors import EngineError, QueueFull
from lcpp_zh.runtime.kv_memory import KvMemory
from lcpp_zh.runtime.prompt_cache import PromptCache
from lcpp_zh.runtime.slots import Request, Slot, check_request, common_prefix
from lcpp_zh.runtime.stream import Finished

logger = logging.getLogger(__name__)


# How long an idle engine waits for more of a burst of requests (see Scheduler._gather_burst).
GATHER_QUIET_S = 0.003
GATHER_MAX_S = 0.03


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
    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None: ...
    def state_save(self, seq_id: int) -> bytes: ...
    def state_load(self, seq_id: int, data: bytes) -> bool: ...


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
                 max_queue: int = 64, n_ctx: int | None = None, prompt_cache: PromptCache | None = None,
                 speculator: Any = None) -> None:
        """`n_ctx`: KV cells shared by the slots (default n_slots * n_ctx_slot); `n_ctx_slot`: the most
        tokens one request may hold (prompt and answer); `prompt_cache`: idle conversations kept in RAM;
        `speculator`: drafts guesses to verify in each step (lcpp_zh.runtime.speculative.Speculator)."""
        self.backend = backend
        self.spec = speculator if speculator is not None and speculator.enabled else None
        self.n_ctx = n_ctx if n_ctx is not None else n_slots * n_ctx_slot
        self.n_ctx_slot = min(n_ctx_slot, self.n_ctx)
        self.slots = [Slot(i, self.n_ctx_slot) for i in range(n_slots)]
        self.kv = KvMemory(backend, self.n_ctx, prompt_cache)
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
            self.kv.forget(self.slots)

    def stats(self) -> dict[str, int]:
        with self.cond:
            cache = self.kv.cache.stats() if self.kv.cache is not None else {}
            return {"slots_total": len(self.slots), "slots_busy": sum(s.busy for s in self.slots),
                    "queue_depth": len(self.queue), "kv_cells_total": self.n_ctx,
                    "kv_cells_used": self.kv.ledger.used, **cache, **self.totals}

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
        """Resume paused requests, then move waiting ones onto idle slots in arrival order while the cache
        can hold them: the first that does not fit waits, and the ones behind it too, so a long prompt is
        never overtaken forever by short ones."""
        if not self._resume_paused():
            return
        while True:
            with self.cond:
                idle = [s for s in self.slots if not s.busy]
                if not self.queue or not idle:
                    return
                req = self.queue[0]
            if not req.stream.cancelled.is_set():
                slot = self._place(req, idle)
                if slot is None:
                    return
            with self.cond:
                if self.queue and self.queue[0] is req:
                    self.queue.popleft()
            if req.stream.cancelled.is_set():
                req.stream.put(Finished("cancelled", len(req.tokens), 0, 0, 0.0, 0.0))
                continue
            self._start(req, slot)

    def _headroom(self, n_tokens: int, max_new: int) -> int:
        """Cells kept free for a request's answer when it joins: enough for a good part of it, not all of
        max_tokens (most answers end much earlier; the pause below handles the rest)."""
        share = max(16, self.n_ctx // (4 * len(self.slots)))
        return max(1, min(max_new, self.n_ctx_slot - n_tokens, share))

    def _place(self, req: Request, idle: list[Slot]) -> Slot | None:
        """The idle slot for `req` with the longest prefix of the prompt in its cells (its own, shared from
        another slot, or restored from RAM), and room for the rest; None when the cache cannot hold it now."""
        slot = max(idle, key=lambda s: slot_score(s, req))
        n = len(req.tokens)
        # At least the last prompt token is evaluated again: its logits give the first sampled token.
        keep = min(common_prefix(slot.tokens, req.tokens), n - 1)
        donor, shared = None, keep
        for other in self.slots:
            if other is not slot and not other.paused and not other.stale:
                m = min(common_prefix(other.tokens, req.tokens), n - 1)
                if m > shared:
                    donor, shared = other, m
        counted = shared if donor is not None and donor.busy else 0  # a running donor's cells are counted
        headroom = self._headroom(n, req.params.max_tokens)
        if self._committed() + n - counted + headroom > self.n_ctx:
            return None
        if len(slot.tokens) - max(keep, shared) >= self._min_save():
            self.kv.save(slot)  # its conversation may come back: keep it in RAM
        if donor is not None:
            self.kv.share(donor, slot, shared)
            self.totals["shared_tokens"] += shared
            keep = shared
        else:
            keep = self.kv.restore(slot, req.tokens, keep)
        self.kv.trim(slot, min(keep, n - 1))
        self.kv.evict_idle(self.slots, n - len(slot.tokens) + headroom, exclude=slot)
        return slot

    def _committed(self) -> int:
        """Cells the running requests hold or will soon: their cells, their prompt still to evaluate and
        the headroom of their answer."""
        running = [s for s in self.slots if s.busy and not s.paused]
        total = self.kv.ledger.used_by(s.seq_id for s in running)
        for slot in running:
            total += len(slot.pending) + (slot.next_token is not None)
            left = slot.req.params.max_tokens - slot.n_generated
            total += self._headroom(len(slot.tokens) + len(slot.pending), left)
        return total

    def _min_save(self) -> int:
        return self.kv.cache.min_tokens if self.kv.cache is not None else 1 << 30

    def _start(self, req: Request, slot: Slot) -> None:
        keep = min(common_prefix(slot.tokens, req.tokens), len(req.tokens) - 1)
        keep = self.kv.trim(slot, keep)
        try:
            sampler = self.backend.make_sampler(req.params, req.tokens)
        except EngineError as exc:
            req.stream.put(Finished("error", len(req.tokens), 0, 0, 0.0, 0.0, error=str(exc)))
            return
        slot.start(req, keep, sampler, self.backend.piece)
        if self.spec is not None:
            self.spec.begin(slot.seq_id, req.tokens)
        self.totals["prompt_tokens"] += len(req.tokens)
        self.totals["cached_tokens"] += keep
        logger.debug("slot %d: %d prompt tokens, %d cached", slot.seq_id, len(req.tokens), keep)

    # --- when running requests outgrow the cache ---
    def _make_room(self) -> None:
        """Before a batch: room for one token of every generating slot and for some prefill. Idle slots go
        first (to RAM); then the newest running request pauses, oldest ones keep going (llama-server instead
        fails the batch when its unified cache is full)."""
        while True:
            active = [s for s in self.slots if s.busy and not s.paused]
            need = sum(s.next_token is not None for s in active) + any(s.pending for s in active)
            if need <= self.kv.free or self.kv.evict_idle(self.slots, need):
                return
            if len(active) <= 1:
                return  # cannot happen (one request fits n_ctx_slot <= n_ctx); decode would report it
            self._pause(max(active, key=lambda s: s.t_start))

    def _pause(self, slot: Slot) -> None:
        """Take a running request's cells away (kept in RAM when a cache is on); it resumes where it was."""
        self.kv.save(slot)
        resume = slot.tokens + slot.pending + ([slot.next_token] if slot.next_token is not None else [])
        self.kv.trim(slot, 0)
        slot.pending, slot.next_token, slot.paused = resume, None, True
        self.totals["paused"] += 1
        logger.info("slot %d paused: the KV cache is full (%d cells)", slot.seq_id, self.n_ctx)

    def _resume_paused(self) -> bool:
        """Resume paused requests, oldest first, while they fit; True when none is left paused."""
        for slot in sorted((s for s in self.slots if s.paused), key=lambda s: s.t_start):
            full = slot.pending
            headroom = self._headroom(len(full), slot.req.params.max_tokens - slot.n_generated)
            if self._committed() + len(full) + headroom > self.n_ctx:
                return False
            keep = self.kv.restore(slot, full, 0)
            # The last token is evaluated again: its logits give the next token.
            keep = self.kv.trim(slot, min(keep, len(full) - 1))
            slot.pending, slot.paused = full[keep:], False
            self.kv.evict_idle(self.slots, len(slot.pending) + headroom, exclude=slot)
        return True

    def step(self) -> None:
        """One llama_decode over all busy slots, then sampling for those that have logits."""
        for slot in self.slots:
            if slot.busy and slot.req.stream.cancelled.is_set():
                self._finish(slot, "cancelled")
        self._make_room()
        # Guesses (speculative decoding) go after each generating slot's token, before any prefill.
        drafts = self.spec.plan(self.slots, self.n_batch, self.kv.free) if self.spec is not None else {}
        batch, plan = self._build_batch(drafts)
        if not plan:
            return
        rc = self.backend.decode(batch)
        self.totals["decode_calls"] += 1
        if rc != 0:
            self._decode_failed(rc, plan)
            return
        for slot, added, index in plan:
            if slot.seq_id in drafts:  # its token and guesses: sampled position by position
                if self.spec.verify(self, slot, added, index):
                    self._release(slot)
                continue
            self.kv.grew(slot, added)
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

    def _build_batch(self, drafts: dict[int, list[int]]) -> tuple[Any, list[tuple[Slot, list[int], int | None]]]:
        batch = self.batch
        batch.clear()
        plan: list[tuple[Slot, list[int], int | None]] = []
        for slot in self.slots:
            if slot.busy and slot.next_token is not None:
                token, slot.next_token = slot.next_token, None
                index = batch.add(token, len(slot.tokens), slot.seq_id, True)
                guesses = drafts.get(slot.seq_id, [])
                for i, guess in enumerate(guesses):
                    batch.add(guess, len(slot.tokens) + 1 + i, slot.seq_id, True)
                plan.append((slot, [token, *guesses], index))
        cells = self.kv.free - batch.n  # prefill only into free cells (_make_room made some)
        for slot in self.slots:
            room = min(self.n_batch - batch.n, cells)
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
            cells -= len(chunk)
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
        if self.spec is not None:
            self.spec.end(slot.seq_id)
        if slot.sampler is not None:
            self.backend.free_sampler(slot.sampler)
            slot.sampler = None
        if slot.stale:  # its cache mixes KV from before and after a context change
            self.kv.trim(slot, 0)
            slot.stale = False
        slot.last_used = time.perf_counter()

    def _fail_all(self, message: str) -> None:
        with self.cond:
            waiting, self.queue = list(self.queue), collections.deque()
        for req in waiting:
            req.stream.put(Finished("error", len(req.tokens), 0, 0, 0.0, 0.0, error=message))
        for slot in self.slots:
            if slot.busy:
                self._finish(slot, "error", message)
