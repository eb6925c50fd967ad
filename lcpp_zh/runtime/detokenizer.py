"""Incremental, UTF-8-safe detokenization: token ids in, complete characters out.

A Chinese character is often split over several byte-fallback tokens (`<0xE4>` `<0xB8>` `<0xAD>`); the
bytes are held back until the character is complete, so no U+FFFD from a split character ever appears
and no byte is dropped. Pieces come from llama_token_to_piece with a buffer that grows as needed
(llama-cpp-python's own detokenize drops pieces longer than 32 bytes).
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import Callable, Iterable

logger = logging.getLogger(__name__)

PieceFn = Callable[[int], bytes]


class IncrementalDetokenizer:
    """Feed token ids one at a time; get back only text made of complete UTF-8 characters."""

    def __init__(self, piece: PieceFn) -> None:
        self._piece = piece
        # errors="replace" only ever fires for bytes that can never form a character (a model emitting
        # invalid UTF-8); an incomplete trailing sequence is buffered by the incremental decoder.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        """The text completed by this token (may be empty while a character is incomplete)."""
        return self._decoder.decode(self._piece(token), final=False)

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete character held back so far."""
        return len(self._decoder.getstate()[0])

    def flush(self) -> str:
        """End of stream: whatever is held back. Only an incomplete character the model never finished
        becomes U+FFFD here, so that no byte disappears silently."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text


class StopMatcher:
    """Finds stop strings in streamed text, holding back any tail that may be the start of one.

    `push(text)` returns (text safe to emit, stopped); once stopped, the stop string and anything after
    it are discarded. `flush()` returns the held-back tail when the stream ends for another reason.
    """

    def __init__(self, stops: Iterable[str]) -> None:
        self._stops = [s for s in dict.fromkeys(stops) if s]
        self._held = ""
        self.stopped: str | None = None

    def push(self, text: str) -> tuple[str, bool]:
        if self.stopped is not None:
            return "", True
        if not self._stops:
            return text, False
        buf = self._held + text
        hit = min(((buf.find(s), s) for s in self._stops if s in buf), default=None)
        if hit is not None:
            self._held = ""
            self.stopped = hit[1]
            return buf[: hit[0]], True
        keep = self._partial_tail(buf)
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[: len(buf) - keep], False

    def _partial_tail(self, buf: str) -> int:
        """Length of the longest suffix of `buf` that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:n]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self.stopped is not None else held
