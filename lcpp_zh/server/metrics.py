"""/metrics through prometheus_client: HTTP requests, generations, tokens, time to first token, decoding
speed, runner restarts, and each engine's scheduler figures.

Each server has a registry of its own (tests run several in one process). Engine figures are read when
/metrics is scraped: the gauges (slots busy, queue depth, runner up) as gauges, the running totals
(requests, prompt, cached and generated tokens, decode calls) as counters, which restart from zero with a
restarted runner, as Prometheus counters may.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

logger = logging.getLogger(__name__)

# No `_created` series next to every counter: nothing reads them, and they double the scrape.
disable_created_metrics()

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TPS_BUCKETS = (1, 5, 10, 25, 50, 100, 200, 400, 1000)
PREFIX = "lcpp_zh_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Engine stats() keys that are running totals; every other numeric key is a gauge.
ENGINE_COUNTERS = frozenset({"requests", "prompt_tokens", "cached_tokens", "generated_tokens", "decode_calls",
                             "draft_tokens", "draft_accepted"})


class _EngineCollector:
    """Reads each served model's engine.stats() at scrape time."""

    def __init__(self, models: Callable[[], list[Any]]) -> None:
        self._models = models

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for model in self._models():
            try:
                stats = model.engine.stats()
            except Exception as exc:  # noqa: BLE001 - /metrics must answer even if one engine is broken
                logger.warning("stats of %s: %s", model.alias, exc)
                continue
            if stats.get("draft_tokens"):  # speculative decoding: the share of guesses the model confirmed
                stats = {**stats, "draft_acceptance_ratio": stats.get("draft_accepted", 0) / stats["draft_tokens"]}
            for key, value in sorted(stats.items()):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    continue
                family = families.get(key)
                if family is None:
                    kind = CounterMetricFamily if key in ENGINE_COUNTERS else GaugeMetricFamily
                    family = families[key] = kind(f"{PREFIX}engine_{key}", f"Engine figure {key}.", labels=["model"])
                family.add_metric([model.alias], value)
        yield from families.values()


class Metrics:
    """The server's metrics; `bind_models` tells it where the served models are, `render` gives /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r, p = self.registry, PREFIX
        self.http = Counter(f"{p}http_requests", "HTTP requests by route and status.", ["route", "status"], registry=r)
        self.in_flight = Gauge(f"{p}requests_in_flight", "HTTP requests being answered now.", registry=r)
        self.generations = Counter(f"{p}generations", "Finished generations by reason.", ["model", "reason"], registry=r)
        self.cancelled = Counter(f"{p}client_cancelled", "Generations stopped because the client went away.",
                                 ["model"], registry=r)
        self.prompt_tokens = Counter(f"{p}prompt_tokens", "Prompt tokens of finished generations.", ["model"], registry=r)
        self.completion_tokens = Counter(f"{p}completion_tokens", "Generated tokens of finished generations.",
                                         ["model"], registry=r)
        self.ttft = Histogram(f"{p}time_to_first_token_seconds", "Time from request to first token.", ["model"],
                              buckets=TTFT_BUCKETS, registry=r)
        self.tps = Histogram(f"{p}tokens_per_second", "Decoding speed of each finished generation.", ["model"],
                             buckets=TPS_BUCKETS, registry=r)
        self.restarts = Counter(f"{p}runner_restarts", "Runner processes that died and were restarted.", ["model"],
                                registry=r)
        self._models: Callable[[], list[Any]] = list
        r.register(_EngineCollector(lambda: self._models()))

    def bind_models(self, models: Callable[[], list[Any]]) -> None:
        self._models = models

    def observe_http(self, route: str, status: int) -> None:
        self.http.labels(route, str(status)).inc()

    def change_in_flight(self, delta: int) -> None:
        self.in_flight.inc(delta)

    def observe_finished(self, model: str, event: Any) -> None:
        self.generations.labels(model, event.reason).inc()
        self.prompt_tokens.labels(model).inc(int(event.prompt_tokens or 0))
        self.completion_tokens.labels(model).inc(int(event.completion_tokens or 0))
        if event.ttft_s is not None and event.completion_tokens:
            self.ttft.labels(model).observe(float(event.ttft_s))
        if event.tokens_per_s:
            self.tps.labels(model).observe(float(event.tokens_per_s))

    def observe_cancelled(self, model: str) -> None:
        self.cancelled.labels(model).inc()

    def observe_restart(self, model: str) -> None:
        self.restarts.labels(model).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
