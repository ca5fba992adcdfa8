"""Prometheus metrics, on a registry owned by the app (no process globals)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

_MAX_LABEL_VALUES = 500
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class LabelGuard:
    """Caps distinct values of request-controlled labels (model names) so a client cannot explode
    the metrics' cardinality; values past the cap are reported as `other`."""

    def __init__(self, limit: int = _MAX_LABEL_VALUES) -> None:
        self._seen: set[str] = set()
        self._limit = limit

    def __call__(self, value: str | None) -> str:
        if value is None:
            return ""
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit:
            return "other"
        self._seen.add(value)
        return value


class CallStats:
    """Per-call aggregates kept as plain numbers on the hot path and turned into Prometheus metrics
    only when scraped (a custom collector): a call costs a few dict lookups, not a dozen locks."""

    def __init__(self, buckets: tuple[float, ...] = _BUCKETS) -> None:
        self.buckets = buckets
        # (provider, model, decision, status) -> [count, seconds_sum, per-bucket counts...]
        self.calls: dict[tuple[str, str, str, str], list[float]] = {}
        # (provider, model) -> [input tokens, output tokens, cost in nano-dollars]
        self.usage: dict[tuple[str, str], list[int]] = {}
        # provider -> [count, seconds_sum, per-bucket counts...] of the upstream's time to first byte
        self.ttfb: dict[str, list[float]] = {}

    def _histogram_row(self, table: dict[Any, list[float]], key: Any, seconds: float) -> None:
        row = table.get(key)
        if row is None:
            row = table[key] = [0.0, 0.0] + [0.0] * (len(self.buckets) + 1)
        row[0] += 1
        row[1] += seconds
        row[2 + bisect_left(self.buckets, seconds)] += 1

    def observe_ttfb(self, provider: str, seconds: float) -> None:
        self._histogram_row(self.ttfb, provider, seconds)

    def observe(self, key: tuple[str, str, str, str], seconds: float, input_tokens: int, output_tokens: int,
                cost_nusd: int) -> None:
        self._histogram_row(self.calls, key, seconds)
        if input_tokens or output_tokens or cost_nusd:
            ukey = (key[0], key[1])
            u = self.usage.get(ukey)
            if u is None:
                u = self.usage[ukey] = [0, 0, 0]
            u[0] += input_tokens
            u[1] += output_tokens
            u[2] += cost_nusd

    def collect(self) -> Iterator[Metric]:
        calls = CounterMetricFamily("tollhouse_calls", "Calls through the gateway",
                                    labels=["provider", "model", "decision", "status"])
        latency = HistogramMetricFamily("tollhouse_request_duration_seconds", "Time from request to last byte",
                                        labels=["provider", "model", "decision"])
        merged: dict[tuple[str, str, str], list[float]] = {}
        for key, row in list(self.calls.items()):
            calls.add_metric(list(key), row[0])
            acc = merged.setdefault(key[:3], [0.0] * len(row))
            for i, v in enumerate(row):
                acc[i] += v
        for key3, row in merged.items():
            latency.add_metric(list(key3), self._points(row), row[1])
        ttfb = HistogramMetricFamily("tollhouse_upstream_ttfb_seconds",
                                     "Time to the upstream's answer: its first byte for streams, the whole "
                                     "body otherwise", labels=["provider"])
        for provider, row in list(self.ttfb.items()):
            ttfb.add_metric([provider], self._points(row), row[1])
        tokens = CounterMetricFamily("tollhouse_tokens", "Tokens metered", labels=["provider", "model", "direction"])
        cost = CounterMetricFamily("tollhouse_cost_usd", "Cost metered, USD", labels=["provider", "model"])
        for (provider, model), (inp, outp, nusd) in list(self.usage.items()):
            tokens.add_metric([provider, model, "input"], inp)
            tokens.add_metric([provider, model, "output"], outp)
            cost.add_metric([provider, model], nusd / 1e9)
        yield from (calls, latency, ttfb, tokens, cost)

    def _points(self, row: list[float]) -> list[tuple[str, float]]:
        cumulative = 0.0
        points: list[tuple[str, float]] = []
        for le, count in zip([*map(str, self.buckets), "+Inf"], row[2:], strict=True):
            cumulative += count
            points.append((le, cumulative))
        return points


class _StatsCollector(Collector):
    def __init__(self, stats: CallStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        return self._stats.collect()


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.model_label = LabelGuard()
        self.stats = CallStats()
        r.register(_StatsCollector(self.stats))
        self.unpriced = Counter("tollhouse_unpriced_calls", "Metered calls whose model has no known price",
                                ["provider", "model"], registry=r)
        self.unparsed = Counter("tollhouse_unparsed_requests",
                                "Metered requests whose body was not valid JSON", ["provider"], registry=r)
        self.upstream_errors = Counter("tollhouse_upstream_errors", "Upstream unreachable or timed out",
                                       ["provider", "kind"], registry=r)
        self.disconnects = Counter("tollhouse_client_disconnects", "Clients that went away mid-response",
                                   ["provider"], registry=r)
        self.event_write_errors = Counter("tollhouse_event_write_errors",
                                          "Failed event batch writes (retried)", registry=r)
        self.violations = Counter("tollhouse_policy_violations", "Rule violations (enforced or observed)",
                                  ["rule", "severity", "enforced"], registry=r)
        self.ledger_unavailable = Counter("tollhouse_ledger_unavailable", "Calls whose budget counters could "
                                          "not be read", ["failed"], registry=r)
        self.ledger_settle_errors = Counter("tollhouse_ledger_settle_errors", "Settles the counter store did not "
                                            "take (the counters are rebuilt from the event store)", registry=r)
        self.exemption_passes = Counter("tollhouse_exemption_passes", "Enforced calls an approved exemption "
                                        "let past a rule they violated", ["rule"], registry=r)
        self.agent_events = Counter("tollhouse_agent_events", "Call events received from agents (stored, or "
                                    "duplicate: already stored, from a retried batch)", ["result"], registry=r)
        self.lease_requests = Counter("tollhouse_lease_requests", "Budget lease requests answered (agents asking "
                                      "for, renewing or returning their leases)", registry=r)
        self.connections_refused = Counter("tollhouse_connections_refused", "Client connections refused at once "
                                           "because limits.max_connections were open", registry=r)
        self.events_pending = Gauge("tollhouse_events_pending", "Events waiting to be written", registry=r)
        self.events_memory_only = Gauge("tollhouse_events_memory_only", "Events neither the journal nor the store "
                                        "could take yet (held in memory; storage is failing)", registry=r)
        self.events_dropped = Counter("tollhouse_events_dropped", "Events dropped because storage failed and the "
                                      "in-memory bound (events.max_pending) was reached", registry=r)
        self.storage_refusals = Counter("tollhouse_storage_refusals", "Calls refused (503) because their events "
                                        "could not be recorded", registry=r)

    def observe_call(self, provider: str, model: str | None, decision: str, status: int, input_tokens: int,
                     output_tokens: int, cost_nusd: int, seconds: float) -> None:
        self.stats.observe((provider, self.model_label(model), decision, str(status)), seconds, input_tokens,
                           output_tokens, cost_nusd)
