"""Prometheus metrics of the forward proxy, on the registry the gateway serves at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

KINDS = ("intercepted", "tunnelled", "denied", "refused", "failed")


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.connections = Counter(
            "tollhouse_forward_connections", "CONNECTs by outcome: intercepted (TLS session started), tunnelled, "
            "denied (forward_proxy.deny), refused (malformed, unauthorised, over a limit), failed (the host or the "
            "TLS handshake failed)", ["outcome"], registry=r)
        for kind in KINDS:
            self.connections.labels(kind)
        self.tunnel_bytes = Counter("tollhouse_forward_tunnel_bytes", "Bytes carried by tunnels",
                                    ["direction"], registry=r)
        self.open = Gauge("tollhouse_forward_open", "CONNECTs being answered and tunnels open", registry=r)
