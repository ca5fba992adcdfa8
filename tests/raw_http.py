"""One HTTP request over a fresh connection, redirects not followed (to see Location, Set-Cookie and
the exact status), optionally from a chosen loopback source address."""

from __future__ import annotations

import http.client

Reply = tuple[int, bytes, dict[str, str]]


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            source: str | None = None) -> Reply:
    """`source`: the client's own address (e.g. 127.0.0.2), to look like another machine."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0) if source else None)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
