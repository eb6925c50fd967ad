"""Streamed model text made fit for a terminal: control characters and escape sequences taken out
(ControlFilter), then soft wrapping by display width (StreamWrapper). Both keep state between chunks, so a
sequence or a word split across two chunks is handled whole. Pure functions, no terminal I/O.
"""

from __future__ import annotations

import logging

from wcwidth import wcwidth

logger = logging.getLogger(__name__)

TAB_STOP = 8

# Characters that reorder or hide text without being C0/C1 controls: the bidi marks, embeddings,
# overrides (U+202E writes the rest of a line backwards) and isolates. Zero-width joiners stay: emoji
# sequences need them.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

_ESC, _BEL, _ST8 = "\x1b", "\x07", "\x9c"
_CSI8 = "\x9b"
_STRING_STARTS = frozenset("]PX^_")  # ESC ] OSC (hyperlinks, titles, clipboard), ESC P DCS, SOS, PM, APC
_STRING_STARTS8 = frozenset("\x9d\x90\x98\x9e\x9f")  # their 8-bit (C1) forms

# Parser states (ECMA-48 shapes, as xterm reads them).
_TEXT, _ESCAPE, _ESCAPE_INTER, _CSI, _STRING, _STRING_ESC = range(6)
MAX_CSI = 64  # a longer "CSI" is not one: stop swallowing and show the rest as text
MAX_STRING = 4096  # an OSC never terminated must not swallow the rest of the answer


def char_width(ch: str) -> int:
    return max(wcwidth(ch), 0)


def is_control(ch: str) -> bool:
    """A character a terminal acts on instead of showing (tab and newline excepted)."""
    code = ord(ch)
    if ch in "\n\t":
        return False
    return code < 0x20 or 0x7F <= code <= 0x9F or ch in BIDI_CONTROLS


class ControlFilter:
    """feed() streamed text, get back the text with every control character and escape sequence removed.

    What a terminal would take as a command never reaches it: ESC and whole CSI/OSC/DCS sequences (colours,
    cursor moves, OSC 8 hyperlinks, window titles), their 8-bit C1 forms, BEL, backspace, carriage return,
    DEL and the bidi overrides. Newline and tab stay. A sequence cut between two chunks is recognised
    across the cut; its visible text (a hyperlink's label) is kept.
    """

    def __init__(self) -> None:
        self._state = _TEXT
        self._held = 0  # characters swallowed in the current sequence

    def feed(self, text: str) -> str:
        out: list[str] = []
        for ch in text:
            if self._state == _TEXT:
                self._text(ch, out)
            else:
                self._sequence(ch, out)
        return "".join(out)

    def flush(self) -> str:
        """End of the stream: an unfinished sequence is dropped."""
        self._state, self._held = _TEXT, 0
        return ""

    def _text(self, ch: str, out: list[str]) -> None:
        if ch == _ESC:
            self._enter(_ESCAPE)
        elif ch == _CSI8:
            self._enter(_CSI)
        elif ch in _STRING_STARTS8:
            self._enter(_STRING)
        elif not is_control(ch):
            out.append(ch)

    def _enter(self, state: int) -> None:
        self._state, self._held = state, 0

    def _sequence(self, ch: str, out: list[str]) -> None:
        code, state = ord(ch), self._state
        self._held += 1
        if state == _ESCAPE:
            if ch == "[":
                self._enter(_CSI)
            elif ch in _STRING_STARTS:
                self._enter(_STRING)
            elif 0x20 <= code <= 0x2F:  # ESC ( B and friends: intermediates, then a final byte
                self._enter(_ESCAPE_INTER)
            elif 0x30 <= code <= 0x7E:  # a two-character sequence (ESC 7, ESC c): done
                self._enter(_TEXT)
            else:  # not a sequence: the ESC alone is dropped, the character read as text
                self._enter(_TEXT)
                self._text(ch, out)
        elif state in (_ESCAPE_INTER, _CSI):
            body = range(0x20, 0x30) if state == _ESCAPE_INTER else range(0x20, 0x40)
            final = range(0x30, 0x7F) if state == _ESCAPE_INTER else range(0x40, 0x7F)
            if code in final:
                self._enter(_TEXT)
            elif code not in body or self._held > MAX_CSI:
                self._enter(_TEXT)
                self._text(ch, out)
        elif state == _STRING:
            if ch in (_BEL, _ST8):
                self._enter(_TEXT)
            elif ch == _ESC:
                self._state = _STRING_ESC
            elif ch == "\n" or self._held > MAX_STRING:  # unterminated: give the text back its lines
                self._enter(_TEXT)
                self._text(ch, out)
        else:  # _STRING_ESC: ESC \ is the string terminator; any other ESC starts a new sequence
            self._enter(_TEXT if ch == "\\" else _ESCAPE)
            if ch != "\\":
                self._sequence(ch, out)


def strip_controls(text: str) -> str:
    """A whole text without control characters and escape sequences (see ControlFilter)."""
    return ControlFilter().feed(text)


class StreamWrapper:
    """feed() text as it streams, get back text with newlines inserted at `width` columns (0: no wrapping).

    A Latin word is held back until it ends, so it can move to the next line whole; wide characters and
    spaces are written at once. A tab advances to the next multiple of 8 columns, as the terminal does.
    Expects text without control characters (ControlFilter's output).
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
            elif ch == "\t":
                out.append(self._end_word())
                out.append(self._place(ch, TAB_STOP - self.col % TAB_STOP))
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
