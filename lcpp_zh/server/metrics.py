"""Counters for /metrics, written in Prometheus' text format by hand (no client library needed).

The HTTP side counts requests by route and status, tokens, finishes by reason, time to first token and
decoding speed; each engine's own `stats()` (slots busy, queue depth, ...) is exported as gauges.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from typing import Any

logger = logging.getLogger(__name__)

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TPS_BUCKETS = (1, 5, 10, 25, 50, 100, 200, 400, 1000)
PREFIX = "lcpp_zh_"


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{b}"}} {c}' for b, c in zip(self.buckets, self.counts, strict=True)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}')
        out.append(f"{name}_sum{{{labels}}} {self.total:.6f}")
        out.append(f"{name}_count{{{labels}}} {self.n}")
        return out


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Thread-safe counters; `render(models)` gives the /metrics text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.http = defaultdict(int)  # (route, status) -> count
        self.finished = defaultdict(int)  # (model, reason) -> count
        self.prompt_tokens = defaultdict(int)
        self.completion_tokens = defaultdict(int)
        self.cancelled = defaultdict(int)
        self.ttft: dict[str, _Histogram] = {}
        self.tps: dict[str, _Histogram] = {}
        self.in_flight = 0

    def observe_http(self, route: str, status: int) -> None:
        with self._lock:
            self.http[(route, status)] += 1

    def change_in_flight(self, delta: int) -> None:
        with self._lock:
            self.in_flight += delta

    def observe_finished(self, model: str, event: Any) -> None:
        with self._lock:
            self.finished[(model, event.reason)] += 1
            self.prompt_tokens[model] += int(event.prompt_tokens or 0)
            self.completion_tokens[model] += int(event.completion_tokens or 0)
            if event.ttft_s is not None and event.completion_tokens:
                self.ttft.setdefault(model, _Histogram(TTFT_BUCKETS)).observe(float(event.ttft_s))
            if event.tokens_per_s:
                self.tps.setdefault(model, _Histogram(TPS_BUCKETS)).observe(float(event.tokens_per_s))

    def observe_cancelled(self, model: str) -> None:
        with self._lock:
            self.cancelled[model] += 1

    def render(self, models: list[Any]) -> str:
        """Prometheus text exposition of all counters plus each engine's stats()."""
        with self._lock:
            lines = self._counter_lines()
        lines += _engine_lines(models)
        return "\n".join(lines) + "\n"

    def _counter_lines(self) -> list[str]:
        p = PREFIX
        lines = [f"# HELP {p}http_requests_total HTTP requests by route and status.",
                 f"# TYPE {p}http_requests_total counter"]
        lines += [f'{p}http_requests_total{{route="{_label(r)}",status="{s}"}} {n}' for (r, s), n in sorted(self.http.items())]
        lines += [f"# HELP {p}requests_in_flight HTTP requests being answered now.",
                  f"# TYPE {p}requests_in_flight gauge", f"{p}requests_in_flight {self.in_flight}"]
        lines += [f"# HELP {p}generations_total Finished generations by reason.", f"# TYPE {p}generations_total counter"]
        lines += [f'{p}generations_total{{model="{_label(m)}",reason="{r}"}} {n}' for (m, r), n in sorted(self.finished.items())]
        lines += [f"# HELP {p}client_cancelled_total Generations stopped because the client went away.",
                  f"# TYPE {p}client_cancelled_total counter"]
        lines += [f'{p}client_cancelled_total{{model="{_label(m)}"}} {n}' for m, n in sorted(self.cancelled.items())]
        for name, table in (("prompt_tokens_total", self.prompt_tokens), ("completion_tokens_total", self.completion_tokens)):
            lines += [f"# TYPE {p}{name} counter"]
            lines += [f'{p}{name}{{model="{_label(m)}"}} {n}' for m, n in sorted(table.items())]
        lines += [f"# HELP {p}time_to_first_token_seconds Time from request to first token.",
                  f"# TYPE {p}time_to_first_token_seconds histogram"]
        for model, hist in sorted(self.ttft.items()):
            lines += hist.lines(f"{p}time_to_first_token_seconds", f'model="{_label(model)}"')
        lines += [f"# HELP {p}tokens_per_second Decoding speed of each finished generation.",
                  f"# TYPE {p}tokens_per_second histogram"]
        for model, hist in sorted(self.tps.items()):
            lines += hist.lines(f"{p}tokens_per_second", f'model="{_label(model)}"')
        return lines


def _engine_lines(models: list[Any]) -> list[str]:
    """Each numeric entry of engine.stats() as a gauge lcpp_zh_engine_<key>{model=...}."""
    gauges: dict[str, list[str]] = defaultdict(list)
    for model in models:
        try:
            stats = model.engine.stats()
        except Exception as exc:  # noqa: BLE001 - /metrics must answer even if one engine is broken
            logger.warning("stats of %s: %s", model.alias, exc)
            continue
        for key, value in stats.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            gauges[key].append(f'{PREFIX}engine_{key}{{model="{_label(model.alias)}"}} {value}')
    lines: list[str] = []
    for key, values in sorted(gauges.items()):
        lines.append(f"# TYPE {PREFIX}engine_{key} gauge")
        lines += values
    return lines
