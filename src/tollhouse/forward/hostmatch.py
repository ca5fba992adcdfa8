"""Matching hosts against lists of names, `*.` wildcards and CIDRs (forward_proxy.intercept and .deny)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def name_matches(host: str, pattern: str) -> bool:
    """`pattern` is a host name, or `*.suffix` for every host under suffix (not suffix itself)."""
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def ip_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class HostList:
    """Names and wildcards, and networks. Entries are normalised already (config validators)."""

    names: tuple[str, ...]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def of(cls, entries: Iterable[str]) -> HostList:
        names: list[str] = []
        networks: list[IPNetwork] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.append(entry.lower())
        return cls(tuple(names), tuple(networks))

    def name_match(self, host: str) -> str | None:
        """The entry that matches `host` by name (or as an address literal), or None."""
        host = host.lower().rstrip(".")
        for pattern in self.names:
            if name_matches(host, pattern):
                return pattern
        address = ip_of(host)
        return self.address_match(str(address)) if address is not None else None

    def address_match(self, address: str) -> str | None:
        ip = ip_of(address)
        if ip is None:
            return None
        for net in self.networks:
            if ip.version == net.version and ip in net:
                return str(net)
        return None
