"""How long a model stays loaded after its last request: Ollama's `keep_alive` forms, parsed to seconds.

Shared by `serve --keep-alive` and the request field. Only parsing lives here; the registry
(lcpp_zh.server.registry) applies the result. None means forever, 0 means unload as soon as the request ends.
"""

from __future__ import annotations

import math
import re

from lcpp_zh.server.httperrors import ApiError

# Go's time.ParseDuration units (Ollama parses keep_alive strings with it), in seconds.
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")
# Beyond a century is "forever": a timer that far out would only overflow the event loop's clock.
_FOREVER_S = 100 * 365 * 24 * 3600.0


def _bad(value: object) -> ApiError:
    return ApiError(400, f"keep_alive {value!r} is not a duration: give seconds (300), a Go duration "
                         "('5m', '1h30m', '500ms'), 0 to unload now or -1 to keep the model loaded",
                    param="keep_alive", code="invalid_keep_alive")


def _seconds_of(text: str) -> float | None:
    """A Go duration ('1h30m', '-5m', '0') or a bare number of seconds, as Ollama's OLLAMA_KEEP_ALIVE reads them."""
    if _NUMBER.fullmatch(text):
        return float(text)
    sign, body = (-1.0, text[1:]) if text[:1] == "-" else (1.0, text.removeprefix("+"))
    position, total = 0, 0.0
    for match in _PART.finditer(body):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if position != len(body) or not body:
        return None
    return sign * total


def parse_keep_alive(value: object) -> float | None:
    """Seconds to keep a model loaded after its last request: None = forever (any negative value, as
    Ollama), 0 = unload right after the request. Numbers are seconds; strings are Go durations or seconds.
    Junk raises a 400 ApiError (param keep_alive)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _bad(value)
    seconds = float(value) if not isinstance(value, str) else _seconds_of(value.strip())
    if seconds is None or math.isnan(seconds):
        raise _bad(value)
    if seconds < 0 or seconds > _FOREVER_S:
        return None
    return seconds


def describe_keep_alive(seconds: float | None) -> str:
    """For logs and --help: 'forever', '0 s' or '5m'."""
    if seconds is None:
        return "forever"
    if seconds and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g} s"
