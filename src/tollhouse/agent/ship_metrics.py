"""Prometheus metrics of the telemetry shipper, on the registry the agent serves at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ShipMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        self.shipped = Counter("tollhouse_spool_shipped", "Spooled events the control plane acknowledged",
                               registry=r)
        self.duplicates = Counter("tollhouse_spool_duplicates", "Acknowledged events the control plane already "
                                  "had (a batch sent again after a lost answer or a crash)", registry=r)
        self.dropped = Counter("tollhouse_spool_dropped", "Unshipped events given up because the spool was over "
                               "its bound (oldest first)", registry=r)
        self.refused = Counter("tollhouse_spool_refused", "Events the control plane refused as invalid (400); "
                               "skipped, kept in the local store", registry=r)
        self.failures = Counter("tollhouse_spool_ship_failures", "Shipping attempts that failed and are retried",
                                ["kind"], registry=r)
        self.unauthorized = Counter("tollhouse_spool_unauthorized", "Times the control plane refused the agent's "
                                    "token (401/403): shipping stops until a new token is set", registry=r)
        self.backlog = Gauge("tollhouse_spool_backlog", "Spooled events not yet acknowledged", registry=r)
        self.stopped = Gauge("tollhouse_spool_shipping_stopped", "1 while shipping is stopped because the token "
                             "was refused", registry=r)
