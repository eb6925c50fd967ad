"""Valid UTF-8 by construction: which tokens may be sampled next, given the bytes generated so far.

Byte-fallback vocabularies (Atom, Llama 2) spell rare characters as byte tokens (`<0xE4>` `<0xB8>` `<0xAD>`),
and a repetition penalty readily pushes the one continuation byte a character needs below some other token,
which leaves U+FFFD in the answer. `Utf8Table` classifies every token of a vocabulary once (numpy arrays of
its leading bytes); `Utf8Guard` follows one request's bytes and, before llama.cpp's chain runs, sets to -inf
every token that would make them invalid: inside a character, all but the tokens that continue it (never
end-of-generation); at a character boundary, the tokens that start with a continuation byte or hold bytes
that are never UTF-8. It never samples and never calls llama.cpp; lcpp_zh.runtime.engine applies it.
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

# Lead byte -> (length of the character, range of its second byte). RFC 3629, table 3-7 of Unicode:
# E0 and F0 exclude overlong forms, ED the surrogates, F4 code points beyond U+10FFFF.
_LEADS: dict[int, tuple[int, int, int]] = {
    **{b: (2, 0x80, 0xBF) for b in range(0xC2, 0xE0)},
    0xE0: (3, 0xA0, 0xBF),
    **{b: (3, 0x80, 0xBF) for b in (*range(0xE1, 0xED), 0xEE, 0xEF)},
    0xED: (3, 0x80, 0x9F),
    0xF0: (4, 0x90, 0xBF),
    **{b: (4, 0x80, 0xBF) for b in range(0xF1, 0xF4)},
    0xF4: (4, 0x80, 0x8F),
}
CONTINUATION = (0x80, 0xBF)

# (continuation bytes still needed, range of the next byte); None is a character boundary.
State = tuple[int, int, int]


def state_after(pending: bytes) -> State | None:
    """The state of a decoder that holds `pending`, the bytes of an incomplete character (b"" at a boundary)."""
    if not pending or pending[0] not in _LEADS:
        return None
    length, lo, hi = _LEADS[pending[0]]
    need = length - len(pending)
    if need <= 0:
        return None
    return (need, lo, hi) if len(pending) == 1 else (need, *CONTINUATION)


def is_valid_prefix(data: bytes) -> bool:
    """Whether `data`, read from a character boundary, is valid UTF-8 that may end inside a character."""
    try:
        _, consumed = codecs.utf_8_decode(data, "strict", False)
    except UnicodeDecodeError:
        return False
    tail = data[consumed:]  # an incomplete last character: Python checks its bytes only once complete
    state = state_after(tail[:1])
    for byte in tail[1:]:
        if state is None or not state[1] <= byte <= state[2]:
            return False
        state = (state[0] - 1, *CONTINUATION) if state[0] > 1 else None
    return not tail or state is not None


class Utf8Table:
    """Every token's leading bytes, classified once per vocabulary; the allowed ids per state are cached."""

    def __init__(self, pieces: Sequence[bytes], eog: Sequence[bool]) -> None:
        n = len(pieces)
        self.pieces = list(pieces)
        self.eog = np.asarray(eog, dtype=bool)
        self.first = np.full(n, -1, dtype=np.int16)       # first byte, -1 for an empty piece
        self.length = np.zeros(n, dtype=np.int32)
        self.n_cont = np.zeros(n, dtype=np.int8)          # leading continuation bytes, at most 3
        # tail_ok[t, k]: piece[k:] is valid from a boundary (what follows once k bytes finished a character).
        self.tail_ok = np.ones((n, 4), dtype=bool)
        for token, piece in enumerate(self.pieces):
            if not piece:
                continue
            self.first[token] = piece[0]
            self.length[token] = len(piece)
            if piece.isascii():
                continue
            n_cont = 0
            while n_cont < min(3, len(piece)) and 0x80 <= piece[n_cont] <= 0xBF:
                n_cont += 1
            self.n_cont[token] = n_cont
            for k in range(n_cont + 1):
                self.tail_ok[token, k] = is_valid_prefix(piece[k:])
        # At a boundary: pieces that are not valid UTF-8 from a boundary (end-of-generation always allowed).
        self.banned_at_boundary = np.flatnonzero((self.length > 0) & ~self.tail_ok[:, 0] & ~self.eog)
        self._allowed: dict[State, np.ndarray | None] = {}

    @classmethod
    def from_vocab(cls, n_vocab: int, piece, is_eog) -> Utf8Table:
        """Build from a model's `piece(token) -> bytes` and `is_eog(token) -> bool` (about 0.1 s for 49k tokens)."""
        return cls([piece(t) for t in range(n_vocab)], [is_eog(t) for t in range(n_vocab)])

    def allowed(self, state: State) -> np.ndarray | None:
        """Ids of the tokens that continue a character in `state` validly; None when no token can, so that
        the caller leaves the logits alone rather than ban every candidate."""
        if state not in self._allowed:
            need, lo, hi = state
            ok = ((self.first >= lo) & (self.first <= hi)
                  & (self.n_cont >= np.minimum(need, self.length))
                  & self.tail_ok[:, need] & ~self.eog)
            ids = np.flatnonzero(ok)
            if not len(ids):
                logger.warning("no token of this vocabulary continues a character in state %s; not masking", state)
            self._allowed[state] = ids if len(ids) else None
        return self._allowed[state]


class Utf8Guard:
    """One request's UTF-8 state: masks the logits before sampling and follows each sampled token."""

    def __init__(self, table: Utf8Table) -> None:
        self.table = table
        # The same decoder the slot's IncrementalDetokenizer uses, fed the same tokens: same pending bytes.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.state: State | None = None

    def apply(self, logits: np.ndarray) -> None:
        """Set the logits of the tokens that would break UTF-8 to -inf, in place (float32, by token id)."""
        if self.state is None:
            logits[self.table.banned_at_boundary] = -np.inf
            return
        ids = self.table.allowed(self.state)
        if ids is None:
            return
        kept = logits[ids]
        if not np.isfinite(kept).any():  # a logit bias of -inf on all of them: leave the choice to the chain
            return
        # The allowed set is small inside a character (byte tokens): save, fill, restore.
        logits.fill(-np.inf)
        logits[ids] = kept

    def accept(self, token: int) -> None:
        self._decoder.decode(self.table.pieces[token], False)
        self.state = state_after(self._decoder.getstate()[0])
