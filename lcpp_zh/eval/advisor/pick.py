"""The advisor's memory arithmetic and its choice: a memory size as users write it (8GB, 7.5GiB, 512MB),
this machine's available memory, what running a quantization needs (file + KV cache + overhead), and the
recommendation (lowest mean KLD among the types that fit). Pure functions (lcpp_zh.common.system reads the
machine's available memory).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from lcpp_zh.errors import LcppError

_UNITS = {"": 10**9, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_memory(text: str) -> int:
    """Bytes from `8GB`, `8`, `7.5GiB`, `512MB`, `16g`: GB is 10^9 bytes, GiB 2^30; a bare number is GB."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise LcppError(f"--memory {text!r}: not a memory size; write it as 8GB, 7.5GiB or 512MB")
    value = float(match.group(1)) * _UNITS[unit]
    if value < 1 << 20:
        raise LcppError(f"--memory {text!r}: too small to run a model; write it as 8GB, 7.5GiB or 512MB")
    return int(value)


def format_size(n_bytes: float) -> str:
    """Decimal units, as the table prints them: 812 MB, 4.08 GB."""
    if n_bytes >= 10**9:
        return f"{n_bytes / 10**9:.2f} GB"
    return f"{n_bytes / 10**6:.0f} MB" if n_bytes >= 10**7 else f"{n_bytes / 10**6:.1f} MB"


@dataclass(frozen=True)
class Candidate:
    """One measured type, as the choice sees it."""

    name: str
    kld: float
    needed: int  # bytes to run it: file + KV cache + overhead
    size: int = 0  # file bytes (ties in KLD go to the smaller file)


@dataclass(frozen=True)
class Recommendation:
    choice: str | None  # None when nothing fits
    reason: str  # one line, e.g. "Q5_K_M: best quality that fits 8.00 GB (needs 6.10 GB); Q6_K needs 9.10 GB"


def recommend(candidates: Sequence[Candidate], limit: int, limit_label: str | None = None) -> Recommendation:
    """The lowest mean KLD among the candidates needing at most `limit` bytes, and why."""
    where = limit_label or format_size(limit)
    if not candidates:
        return Recommendation(None, "no quantization was measured")
    fitting = [c for c in candidates if c.needed <= limit]
    if not fitting:
        smallest = min(candidates, key=lambda c: c.needed)
        return Recommendation(None, f"none fits {where}: the smallest, {smallest.name}, needs "
                                    f"{format_size(smallest.needed)}; try a smaller context or another machine")
    best = min(fitting, key=lambda c: (c.kld, c.size))
    reason = f"{best.name}: best quality that fits {where} (needs {format_size(best.needed)}"
    better = [c for c in candidates if c.needed > limit and c.kld < best.kld]
    if better:
        # The next step up in quality that did not fit: the one closest to fitting.
        step = min(better, key=lambda c: c.needed)
        return Recommendation(best.name, f"{reason}); {step.name} needs {format_size(step.needed)}")
    return Recommendation(best.name, f"{reason}, and the lowest KLD measured)")
