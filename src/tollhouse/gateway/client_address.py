"""The address a request came from: the peer, or, when the peer is a trusted reverse proxy
(`identity.trusted_proxies`), the nearest untrusted address its X-Forwarded-For names."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from tollhouse.gateway.http import Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _trusted(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(request: Request, trusted_proxies: Sequence[str]) -> str | None:
    """None when the peer is unknown (the connection is gone)."""
    peer = request.proto.client_address()
    if peer is None or not trusted_proxies:
        return peer
    networks = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]
    if not _trusted(peer, networks):
        return peer
    hops = [h.strip() for h in (request.header("x-forwarded-for") or "").split(",") if h.strip()]
    for hop in reversed(hops):  # the right-most hops were added by our own proxies
        if not _trusted(hop, networks):
            return hop
    return hops[0] if hops else peer
