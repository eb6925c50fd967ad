"""Prompt memory of the engine: which KV cells each slot holds (shared cells counted once) and the KV of idle
conversations kept in host RAM (llama-server's --cache-ram), restored when the conversation comes back.

Pure bookkeeping over bytes and token lists; the scheduler moves the cells through its backend.
"""

from __future__ import annotations

import collections
import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lcpp_zh.runtime.slots import common_prefix

logger = logging.getLogger(__name__)

MiB = 1 << 20


class CellLedger:
    """The KV cells each sequence refers to, with shared cells (llama_memory_seq_cp in a unified cache)
    counted once, so admission sees the memory really in use."""

    def __init__(self) -> None:
        self.cells: dict[int, list[int]] = collections.defaultdict(list)
        self.refs: collections.Counter[int] = collections.Counter()
        self._ids = itertools.count()

    @property
    def used(self) -> int:
        return len(self.refs)

    def append(self, seq: int, n: int) -> None:
        new = [next(self._ids) for _ in range(n)]
        self.cells[seq].extend(new)
        self.refs.update(new)

    def truncate(self, seq: int, keep: int) -> None:
        cells = self.cells[seq]
        for cell in cells[max(keep, 0):]:
            self.refs[cell] -= 1
            if not self.refs[cell]:
                del self.refs[cell]
        del cells[max(keep, 0):]

    def share(self, src: int, dst: int, n: int) -> None:
        """`dst` (emptied first) refers to the first `n` cells of `src`."""
        self.truncate(dst, 0)
        shared = self.cells[src][:n]
        self.cells[dst].extend(shared)
        self.refs.update(shared)

    def used_by(self, seqs: Iterable[int]) -> int:
        """Cells referred to by any of `seqs` (what evicting every other sequence cannot free)."""
        out: set[int] = set()
        for seq in seqs:
            out.update(self.cells[seq])
        return len(out)


@dataclass
class CachedPrompt:
    tokens: tuple[int, ...]
    data: bytes


class PromptCache:
    """Saved KV states of token sequences, least recently used evicted beyond `limit_mb`. A saved prompt that
    extends an older one replaces it; one already covered by a longer entry is not saved twice."""

    def __init__(self, limit_mb: int, *, min_tokens: int = 64) -> None:
        self.limit_bytes = max(0, int(limit_mb)) * MiB
        self.min_tokens = min_tokens
        self.entries: collections.OrderedDict[int, CachedPrompt] = collections.OrderedDict()
        self.size = 0
        self._ids = itertools.count()
        self.saves = self.restores = self.evictions = 0

    def wants(self, tokens: Sequence[int]) -> bool:
        """Whether saving these tokens is worth the copy (long enough, not already covered)."""
        if self.limit_bytes == 0 or len(tokens) < self.min_tokens:
            return False
        return not any(len(e.tokens) >= len(tokens) and common_prefix(e.tokens, tokens) == len(tokens)
                       for e in self.entries.values())

    def save(self, tokens: Sequence[int], data: bytes) -> bool:
        if not data or len(data) > self.limit_bytes or not self.wants(tokens):
            return False
        tokens = tuple(tokens)
        for key, entry in list(self.entries.items()):
            if common_prefix(entry.tokens, tokens) == len(entry.tokens):  # an older, shorter state of it
                self._drop(key)
        self.entries[next(self._ids)] = CachedPrompt(tokens, data)
        self.size += len(data)
        self.saves += 1
        while self.size > self.limit_bytes:
            self._drop(next(iter(self.entries)))
            self.evictions += 1
        return True

    def find(self, tokens: Sequence[int]) -> tuple[CachedPrompt | None, int]:
        """The entry sharing the longest prefix with `tokens` and that length; the entry becomes most
        recently used."""
        best_key, best_n = None, 0
        for key, entry in self.entries.items():
            n = common_prefix(entry.tokens, tokens)
            if n > best_n:
                best_key, best_n = key, n
        if best_key is None:
            return None, 0
        self.entries.move_to_end(best_key)
        return self.entries[best_key], best_n

    def remove(self, entry: CachedPrompt) -> None:
        for key, value in list(self.entries.items()):
            if value is entry:
                self._drop(key)

    def _drop(self, key: int) -> None:
        self.size -= len(self.entries.pop(key).data)

    def stats(self) -> dict[str, int]:
        return {"prompt_cache_entries": len(self.entries), "prompt_cache_bytes": self.size,
                "prompt_cache_saves": self.saves, "prompt_cache_restores": self.restores,
                "prompt_cache_evictions": self.evictions}
