"""The bounds the wire server and client keep (sizes, deadlines, connections), and the process's fd limit.

Plain values, so this package needs nothing from the configuration; `tollhouse.gateway.wire_limits` builds them
from the `limits:` section, and each error message names the key that raises its limit.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

__all__ = ["ClientLimits", "ServerLimits", "default_max_connections", "raise_fd_limit"]

FD_RESERVE = 64  # descriptors kept for everything but client connections (upstreams, store, logs)
MAX_CONNECTIONS_CAP = 10_000
_UNLIMITED = 1 << 20  # Linux's default nr_open: a soft limit no system lets a process exceed anyway


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one client connection may take. `max_connections` None: `default_max_connections()` at start."""

    max_header_bytes: int = 64 * 1024  # request line and headers
    max_headers: int = 100
    head_timeout_s: float = 30.0  # from a request's first byte (or the connection's opening) to its last header
    body_timeout_s: float = 300.0  # from the end of the headers to the body's last byte
    idle_timeout_s: float = 75.0  # a keep-alive connection with no request under way
    write_timeout_s: float = 60.0  # a client that reads < 64 KiB of its backed-up answer in this long is cut off
    max_connections: int | None = None


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """What one upstream response may take. The read timeout (time between two reads) is the client's own."""

    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_response_bytes: int = 64 * 1024 * 1024  # a body read whole (`UpstreamResponse.read`)
    total_timeout_s: float = 600.0  # from sending the request to a whole response's end (and a stream's head)
    stream_total_timeout_s: float = 3600.0  # from sending the request to a stream's end


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return _UNLIMITED
    target = _UNLIMITED if hard == resource.RLIM_INFINITY else hard
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # some systems cap it below the hard limit (macOS: OPEN_MAX); keep what we have
    return int(soft)


def default_max_connections(soft_nofile: int) -> int:
    """Client connections that leave FD_RESERVE descriptors free: min(10000, soft limit - 64), at least 1."""
    return max(1, min(MAX_CONNECTIONS_CAP, soft_nofile - FD_RESERVE))
