"""Speculative decoding's drafting side: guesses of the next tokens of a slot, from its own text (n-gram /
prompt lookup, as llama-server's ngram modes) or from a small draft model with the same vocabulary.

Verification is the scheduler's (lcpp_zh.runtime.scheduler): the guesses go into the step's batch and are
sampled position by position with the slot's real sampler, so the output is exactly what it would be without
them. This module decides what to draft and how much; it never touches the target model's context.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lcpp_zh.errors import EngineError
from lcpp_zh.runtime.llama_api import Batch, LlamaContext, LlamaModel
from lcpp_zh.runtime.settings import SPEC_NGRAM_MODES, EngineSettings
from lcpp_zh.runtime.slots import common_prefix

logger = logging.getLogger(__name__)

# Prompt lookup matches the last NGRAM_MAX tokens first, then shorter suffixes down to NGRAM_MIN (as
# transformers' prompt_lookup_num_tokens does). Two-token matches ("of the") are frequent in free text and
# mostly propose wrong guesses; from three on, a match is usually a copy.
NGRAM_MAX = 4
NGRAM_MIN = 3

# "auto": verifying a draft token costs a fraction of a single-token decode (the weights are read once for the
# whole batch; on a CPU each extra token still adds its own compute, on a GPU almost nothing), while each
# accepted one saves a whole decode. Drafting pays as long as the acceptance rate stays above that fraction,
# a few tenths on a CPU with a small model. So a slot that has drafted AUTO_WINDOW tokens with fewer than
# AUTO_MIN_RATE of them accepted stops drafting for its next AUTO_PAUSE tokens (free chat, where n-gram guesses
# rarely hold), then tries again; copy-heavy answers (edits, refactors, quotes) keep drafting.
AUTO_WINDOW = 16
AUTO_MIN_RATE = 0.3
AUTO_PAUSE = 64

# The first guesses of an answer are at most this many; then the length follows how many held (record()).
# A wrong guess costs its verification, so a long first one is a bet that the answer is a copy.
FIRST_DRAFT = 8

# A draft model stops guessing at a token it is less sure of than this (llama.cpp's --draft-p-min):
# verifying it would most likely be wasted.
DRAFT_P_MIN = 0.5
# llama.cpp's common_speculative_are_compatible: vocabularies may differ this much in size (padding), and the
# texts of the first few ids (control tokens) are not compared.
VOCAB_MAX_SIZE_DIFFERENCE = 128
VOCAB_CHECK_START = 5


class NgramIndex:
    """Prompt lookup over one request's tokens (prompt, then generated): for the last n tokens, the latest
    earlier place where they occurred, and the tokens that followed them there. Indexed incrementally, a
    dict lookup per step."""

    def __init__(self, tokens: Sequence[int] = ()) -> None:
        self.history: list[int] = list(tokens)
        self.maps: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(NGRAM_MIN, NGRAM_MAX + 1)}
        self.indexed = 0  # n-grams ending (exclusive) at positions 1..indexed are in the maps

    def extend(self, tokens: Sequence[int]) -> None:
        self.history.extend(tokens)

    def draft(self, n_max: int) -> list[int]:
        """Up to `n_max` tokens that followed the latest earlier occurrence of the longest matching suffix."""
        h, end = self.history, len(self.history)
        # Index the n-grams ending before the last position: the suffix itself must find an earlier place.
        for e in range(self.indexed + 1, end):
            for n, found in self.maps.items():
                if e >= n:
                    found[tuple(h[e - n:e])] = e
        self.indexed = max(self.indexed, end - 1)
        if n_max <= 0:
            return []
        for n in range(NGRAM_MAX, NGRAM_MIN - 1, -1):
            if end > n:
                at = self.maps[n].get(tuple(h[end - n:]))
                if at is not None:
                    return h[at:at + n_max]
        return []


def check_compatible(target: LlamaModel, draft: LlamaModel) -> None:
    """EngineError unless `draft` tokenizes as `target` does (llama.cpp's rules for a draft model)."""
    import llama_cpp

    tv, dv = target.vocab, draft.vocab
    name = draft.path.name
    if llama_cpp.llama_vocab_type(tv) != llama_cpp.llama_vocab_type(dv):
        raise EngineError(f"draft model {name}: its tokenizer type differs from the model's; "
                          "use a draft model of the same family")
    if target.add_bos != draft.add_bos or (target.add_bos and target.bos_id != draft.bos_id) \
            or target.eos_id != draft.eos_id:
        raise EngineError(f"draft model {name}: its BOS/EOS tokens differ from the model's")
    if abs(target.n_vocab - draft.n_vocab) > VOCAB_MAX_SIZE_DIFFERENCE:
        raise EngineError(f"draft model {name}: vocabulary of {draft.n_vocab} tokens, the model has "
                          f"{target.n_vocab}; a draft model needs the same vocabulary")
    for token in range(VOCAB_CHECK_START, min(target.n_vocab, draft.n_vocab)):
        if llama_cpp.llama_vocab_get_text(tv, token) != llama_cpp.llama_vocab_get_text(dv, token):
            raise EngineError(f"draft model {name}: token {token} differs from the model's; a draft model "
                              "needs the same vocabulary")


class DraftModel:
    """A small model with the target's vocabulary that drafts greedily, one sequence per slot on a context
    of its own; it keeps each slot's tokens in its cache between steps, so only new ones are evaluated."""

    def __init__(self, path: str, target: LlamaModel, *, n_ctx: int, n_seq: int, n_batch: int,
                 n_threads: int, gpu_layers: int = 0) -> None:
        self.model = LlamaModel(path, gpu_layers=gpu_layers)
        try:
            check_compatible(target, self.model)
            self.ctx = LlamaContext(self.model, n_ctx=n_ctx, n_batch=n_batch, n_seq=n_seq, n_threads=n_threads)
        except BaseException:
            self.model.close()
            raise
        self.n_target_vocab = target.n_vocab
        self.cached: list[list[int]] = [[] for _ in range(n_seq)]
        self.batch = Batch(max(self.ctx.n_batch, n_seq))

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()
        self.model.close()

    def draft(self, wants: dict[int, tuple[list[int], int]]) -> dict[int, list[int]]:
        """For each seq_id: (its tokens so far, the most to draft) -> the drafted tokens, in one batch per
        drafted position for all slots."""
        live = {seq: n for seq, (history, n) in wants.items() if n > 0 and self._catch_up(seq, history, wants)}
        drafts: dict[int, list[int]] = {seq: [] for seq in wants}
        last = {seq: (wants[seq][0][-1], len(wants[seq][0]) - 1) for seq in live}
        while live:
            self.batch.clear()
            index = {seq: self.batch.add(token, pos, seq, True) for seq, (token, pos) in last.items()}
            if self.ctx.decode(self.batch) != 0:
                for seq in live:
                    self._forget(seq)
                break
            for seq, (token, _pos) in last.items():
                self.cached[seq].append(token)
            last = {}
            for seq in list(live):
                token = self._pick(index[seq])
                if token is not None:
                    drafts[seq].append(token)
                if token is None or len(drafts[seq]) >= live[seq]:
                    del live[seq]
                else:
                    last[seq] = (token, len(self.cached[seq]))
        return drafts

    def _catch_up(self, seq: int, history: list[int], wants: dict) -> bool:
        """Put all but the last of `history` in the draft cache for `seq` (reusing what it holds)."""
        keep = min(common_prefix(self.cached[seq], history), len(history) - 1)
        if keep < len(self.cached[seq]):
            if not self.ctx.seq_rm(seq, keep, -1):
                self.ctx.seq_rm(seq, -1, -1)
                keep = 0
            del self.cached[seq][keep:]
        todo = history[keep:-1]
        for start in range(0, len(todo), self.ctx.n_batch):
            chunk = todo[start:start + self.ctx.n_batch]
            self.batch.clear()
            for i, token in enumerate(chunk):
                self.batch.add(token, len(self.cached[seq]) + i, seq, False)
            rc = self.ctx.decode(self.batch)
            if rc == 1:  # no room: drop the slots that are not drafting now, then once more
                for other in range(len(self.cached)):
                    if other not in wants:
                        self._forget(other)
                rc = self.ctx.decode(self.batch)
            if rc != 0:
                self._forget(seq)
                return False
            self.cached[seq].extend(chunk)
        return True

    def _forget(self, seq: int) -> None:
        self.ctx.seq_rm(seq, -1, -1)
        self.cached[seq] = []

    def _pick(self, index: int) -> int | None:
        """The draft's most likely token, or None when it is unsure (DRAFT_P_MIN) or outside the target's
        vocabulary."""
        import llama_cpp

        pointer = llama_cpp.llama_get_logits_ith(self.ctx.ctx, index)
        logits = np.ctypeslib.as_array(pointer, shape=(self.model.n_vocab,))
        token = int(np.argmax(logits))
        top = float(logits[token])
        p = 1.0 / float(np.exp(logits - top).sum()) if math.isfinite(top) else 0.0
        if p < DRAFT_P_MIN or token >= self.n_target_vocab:
            return None
        return token


@dataclass
class SlotDrafts:
    """One request's drafting state: its n-gram index, the next draft length and the auto switch."""

    index: NgramIndex
    fed: int = 0          # generated tokens already in the index
    length: int = 0       # the most to draft next time
    window_drafted: int = 0
    window_accepted: int = 0
    paused_until: int = 0  # with "auto": no drafts before this many generated tokens


class Speculator:
    """Drafts for the scheduler's generating slots and adapts to how well the drafts do."""

    def __init__(self, settings: EngineSettings, draft_model: DraftModel | None = None) -> None:
        if settings.spec_ngram not in SPEC_NGRAM_MODES:
            raise EngineError(f"spec_ngram {settings.spec_ngram!r}: expected one of {', '.join(SPEC_NGRAM_MODES)}")
        if not 1 <= settings.draft_min <= settings.draft_max:
            raise EngineError("speculative decoding needs 1 <= draft_min <= draft_max")
        self.ngram = settings.spec_ngram != "off"
        self.auto = settings.spec_ngram == "auto"
        self.draft_model = draft_model
        self.draft_max, self.draft_min = settings.draft_max, settings.draft_min
        self.slots: dict[int, SlotDrafts] = {}

    @property
    def enabled(self) -> bool:
        return self.ngram or self.draft_model is not None

    def begin(self, seq_id: int, prompt: Sequence[int]) -> None:
        self.slots[seq_id] = SlotDrafts(NgramIndex(prompt), length=min(self.draft_max, FIRST_DRAFT))

    def end(self, seq_id: int) -> None:
        self.slots.pop(seq_id, None)

    def propose(self, wants: dict[int, tuple[list[int], int]]) -> dict[int, list[int]]:
        """seq_id -> (its generated tokens, the most it may draft now) gives seq_id -> draft (maybe empty)."""
        out: dict[int, list[int]] = {}
        model_wants: dict[int, tuple[list[int], int]] = {}
        for seq, (generated, limit) in wants.items():
            state = self.slots.get(seq)
            if state is None:
                continue
            state.index.extend(generated[state.fed:])
            state.fed = len(generated)
            n = min(limit, state.length)
            if n < self.draft_min or (self.auto and len(generated) < state.paused_until):
                continue
            draft = state.index.draft(n) if self.ngram else []
            if not draft and self.draft_model is not None:
                model_wants[seq] = (state.index.history, n)
            elif len(draft) >= self.draft_min:
                out[seq] = draft
        if model_wants:
            for seq, draft in self.draft_model.draft(model_wants).items():
                if len(draft) >= self.draft_min:
                    out[seq] = draft
        return out

    def record(self, seq_id: int, n_generated: int, drafted: int, accepted: int) -> None:
        """A verification of `drafted` tokens accepted the first `accepted` of them."""
        state = self.slots.get(seq_id)
        if state is None:
            return
        # Grow the draft while guesses hold; after a miss, draft little more than what held.
        state.length = min(self.draft_max, max(2, 2 * (accepted + 1)))
        state.window_drafted += drafted
        state.window_accepted += accepted
        if state.window_drafted >= AUTO_WINDOW:
            if self.auto and state.window_accepted < AUTO_MIN_RATE * state.window_drafted:
                state.paused_until = n_generated + AUTO_PAUSE
            state.window_drafted = state.window_accepted = 0

    def close(self) -> None:
        if self.draft_model is not None:
            self.draft_model.close()
            self.draft_model = None

    def plan(self, slots: Sequence[Any], n_batch: int, free_cells: int) -> dict[int, list[int]]:
        """seq_id -> the guesses to verify after its token, for the slots that put a token in this step's
        batch; they fit the batch and the free cells beside those tokens."""
        generating = [s for s in slots if s.busy and s.next_token is not None]
        budget = min(n_batch, free_cells) - len(generating)
        wants: dict[int, tuple[list[int], int]] = {}
        for slot in generating:
            # The guesses stay inside the slot's context with room for one more token, so that Slot.on_token ends
            # an answer at the same token as without them; none past max_tokens (they could never be used).
            limit = min(slot.n_ctx - len(slot.tokens) - 2, slot.req.params.max_tokens - slot.n_generated - 1, budget)
            if limit > 0:
                wants[slot.seq_id] = (slot.generated, limit)
                budget -= limit
        return self.propose(wants)

    def verify(self, scheduler: Any, slot: Any, added: list[int], index: int) -> bool:
        """After the decode of a slot's token and its guesses (`added`, logits from batch index `index` on):
        sample position by position with the slot's own sampler, keep guesses while the sampled token equals
        them, and trim the cache after the first that differs (llama.cpp's common_sampler_sample_and_accept_n).
        Each sampled token is what the step without guesses would have sampled. True when the answer ended."""
        backend, kv = scheduler.backend, scheduler.kv
        base, draft = len(slot.tokens), added[1:]
        kv.grew(slot, added)
        slot.n_drafted += len(draft)  # counted before on_token may send the Finished event
        finished, j = False, 0
        while True:
            try:
                token = backend.sample(slot.sampler, index + j)
            except EngineError as exc:  # a grammar that allows no token: this request ends, others go on
                logger.info("slot %d: %s", slot.seq_id, exc)
                slot.finish("error", str(exc))
                finished = True
                break
            scheduler.totals["generated_tokens"] += 1
            if slot.on_token(token, backend.is_eog(token)) is not None:
                finished = True
                break
            if j == len(draft) or token != draft[j]:
                break
            slot.next_token = None  # the guess is in the cache already: its logits are the next position's
            slot.n_accepted += 1
            j += 1
        kv.trim(slot, base + 1 + j)  # drop the guesses after the last one confirmed
        scheduler.totals["draft_tokens"] += len(draft)
        scheduler.totals["draft_accepted"] += j
        self.record(slot.seq_id, slot.n_generated, len(draft), j)
        return finished
