"""Prometheus metrics, on a registry owned by the app (no process globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.model_label = LabelGuard()
        self.calls = Counter("tollhouse_calls", "Calls through the gateway",
                             ["provider", "model", "decision", "status"], registry=r)
        self.tokens = Counter("tollhouse_tokens", "Tokens metered", ["provider", "model", "direction"],
                              registry=r)
        self.cost = Counter("tollhouse_cost_usd", "Cost metered, USD", ["provider", "model"], registry=r)
        self.latency = Histogram("tollhouse_request_duration_seconds", "Time from request to last byte",
                                 ["provider", "model", "decision"], buckets=_BUCKETS, registry=r)
        self.ttfb = Histogram("tollhouse_upstream_ttfb_seconds", "Time to the upstream's first byte",
                              ["provider"], buckets=_BUCKETS, registry=r)
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
        self.events_pending = Gauge("tollhouse_events_pending", "Events waiting to be written", registry=r)
        self._per_call: dict[tuple[str, str, str, str], tuple[Counter, Histogram]] = {}
        self._per_model: dict[tuple[str, str], tuple[Counter, Counter, Counter]] = {}

    def observe_call(self, provider: str, model: str | None, decision: str, status: int, input_tokens: int,
                     output_tokens: int, cost_usd: float, seconds: float) -> None:
        """Record one call. Label children are cached: `labels()` validates and locks on every use."""
        model_label = self.model_label(model)
        key = (provider, model_label, decision, str(status))
        per_call = self._per_call.get(key)
        if per_call is None:
            per_call = (self.calls.labels(*key), self.latency.labels(provider, model_label, decision))
            self._per_call[key] = per_call
        per_call[0].inc()
        per_call[1].observe(seconds)
        if input_tokens or output_tokens or cost_usd:
            mkey = (provider, model_label)
            per_model = self._per_model.get(mkey)
            if per_model is None:
                per_model = (self.tokens.labels(provider, model_label, "input"),
                             self.tokens.labels(provider, model_label, "output"),
                             self.cost.labels(provider, model_label))
                self._per_model[mkey] = per_model
            if input_tokens:
                per_model[0].inc(input_tokens)
            if output_tokens:
                per_model[1].inc(output_tokens)
            if cost_usd:
                per_model[2].inc(cost_usd)
