"""The engine's KV memory as the scheduler sees it: trimming a slot's cells, sharing another slot's prefix,
saving an idle conversation to RAM and restoring it, and evicting idle slots when running ones need room.

Every change of a slot's cached tokens goes through here, so the backend's cells, `slot.tokens` and the
ledger (cells in use, shared ones once) always agree. Policy (who is admitted, who waits) is the scheduler's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from lcpp_zh.runtime.prompt_cache import CellLedger, PromptCache
from lcpp_zh.runtime.slots import Slot

logger = logging.getLogger(__name__)


class KvMemory:
    def __init__(self, backend: Any, n_ctx: int, cache: PromptCache | None = None) -> None:
        self.backend = backend
        self.n_ctx = n_ctx
        self.cache = cache
        self.ledger = CellLedger()

    @property
    def free(self) -> int:
        return self.n_ctx - self.ledger.used

    def grew(self, slot: Slot, added: Sequence[int]) -> None:
        """`added` tokens were decoded into the slot's sequence."""
        slot.tokens.extend(added)
        self.ledger.append(slot.seq_id, len(added))

    def trim(self, slot: Slot, keep: int) -> int:
        """Keep the first `keep` cached tokens of a slot; returns what was kept (0 when llama.cpp cannot
        cut the sequence there, e.g. a recurrent model, and it was cleared instead)."""
        if keep >= len(slot.tokens):
            return len(slot.tokens)
        if keep <= 0 or not self.backend.seq_rm(slot.seq_id, keep, -1):
            self.backend.seq_rm(slot.seq_id, -1, -1)
            keep = 0
        self.ledger.truncate(slot.seq_id, keep)
        del slot.tokens[keep:]
        return keep

    def share(self, donor: Slot, slot: Slot, n: int) -> None:
        """Give `slot` the first `n` cells of `donor` (metadata only in a unified cache: no compute, no copy)."""
        self.trim(slot, 0)
        self.backend.seq_cp(donor.seq_id, slot.seq_id, 0, n)
        self.ledger.share(donor.seq_id, slot.seq_id, n)
        slot.tokens = donor.tokens[:n]

    def save(self, slot: Slot) -> bool:
        """Copy a slot's cells to the RAM cache when they are worth keeping."""
        if self.cache is None or not self.cache.wants(slot.tokens):
            return False
        return self.cache.save(slot.tokens, self.backend.state_save(slot.seq_id))

    def restore(self, slot: Slot, tokens: Sequence[int], better_than: int) -> int:
        """Load the RAM cache's best match for `tokens` into `slot` when it shares more than `better_than`
        tokens (by at least the cache's min_tokens, else the copy is not worth it); returns how many of the
        slot's cached tokens now match `tokens` (`better_than` when nothing was loaded)."""
        if self.cache is None or not self.cache.entries:
            return better_than
        entry, n = self.cache.find(tokens)
        if entry is None or n < better_than + self.cache.min_tokens:
            return better_than
        self.trim(slot, 0)
        if not self.backend.state_load(slot.seq_id, entry.data):
            logger.info("slot %d: no room to restore %d cached tokens", slot.seq_id, len(entry.tokens))
            self.backend.seq_rm(slot.seq_id, -1, -1)
            self.cache.remove(entry)
            return 0
        self.ledger.append(slot.seq_id, len(entry.tokens))
        slot.tokens = list(entry.tokens)
        self.cache.restores += 1
        logger.debug("slot %d: restored %d tokens from RAM", slot.seq_id, len(entry.tokens))
        return n

    def evict_idle(self, slots: Sequence[Slot], need: int, exclude: Slot | None = None) -> bool:
        """Free idle slots' cells (least recently used first, saved to RAM) until `need` cells are free."""
        for slot in sorted((s for s in slots if not s.busy and s.tokens and s is not exclude),
                           key=lambda s: s.last_used):
            if self.free >= need:
                break
            self.save(slot)
            self.trim(slot, 0)
        return self.free >= need

    def forget(self, slots: Sequence[Slot]) -> None:
        """Drop every idle slot's cells and the RAM cache (the context changed: LoRA scales)."""
        for slot in slots:
            if not slot.busy:
                self.trim(slot, 0)
        if self.cache is not None:
            self.cache.entries.clear()
            self.cache.size = 0
