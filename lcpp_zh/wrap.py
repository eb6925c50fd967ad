"""Soft wrapping of streamed text by display width: CJK characters take two columns and may break
anywhere; Latin words move to the next line whole when they do not fit. Pure functions, no terminal I/O.
"""

from __future__ import annotations

import logging

from wcwidth import wcwidth

logger = logging.getLogger(__name__)


def char_width(ch: str) -> int:
    return max(wcwidth(ch), 0)


class StreamWrapper:
    """feed() text as it streams, get back text with newlines inserted at `width` columns (0: no wrapping).

    A Latin word is held back until it ends, so it can move to the next line whole; wide characters and
    spaces are written at once.
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self.col = 0
        self.word = ""
        self.word_width = 0

    def feed(self, text: str) -> str:
        if self.width <= 0:
            return text
        out: list[str] = []
        for ch in text:
            w = char_width(ch)
            if ch == "\n":
                out.append(self._end_word() + "\n")
                self.col = 0
            elif ch.isspace() or w == 2:
                out.append(self._end_word())
                out.append(self._place(ch, w))
            else:
                self.word += ch
                self.word_width += w
        return "".join(out)

    def _place(self, text: str, w: int) -> str:
        if w > self.width and len(text) > 1:  # longer than a whole line: break it by character
            return "".join(self._place(ch, char_width(ch)) for ch in text)
        if self.col + w > self.width:
            if text.isspace():  # a space at the margin becomes the line break
                self.col = 0
                return "\n"
            self.col = w
            return "\n" + text
        self.col += w
        return text

    def _end_word(self) -> str:
        word, w = self.word, self.word_width
        self.word, self.word_width = "", 0
        return self._place(word, w) if word else ""

    def flush(self) -> str:
        return self._end_word() if self.width > 0 else ""
