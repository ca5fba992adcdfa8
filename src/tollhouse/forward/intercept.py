"""An intercepted TLS session's requests, handed to the gateway as if sent to `/{provider}{path}`."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from tollhouse.wire.server import Exchange, Handler, Head

__all__ = ["as_provider"]


def _refuse(exchange: Exchange, message: str) -> None:
    body = json.dumps({"error": {"message": message, "code": "bad_request"}}).encode()
    exchange.keep_alive = False
    exchange.response_bytes(400, [("content-type", "application/json")], body)


def as_provider(app: Handler, provider: str) -> Handler:
    """`app` serving an intercepted host's requests under `/{provider}`: the path is rewritten, nothing else (the
    upstream is the provider's configured one, never the request's Host)."""
    prefix = f"/{provider}"

    async def handle(head: Head, exchange: Exchange) -> None:
        raw = head.raw_path
        if not raw.startswith("/"):
            parts = urlsplit(raw) if raw.startswith(("https://", "http://")) else None
            if parts is None or not parts.path.startswith("/"):
                _refuse(exchange, f"the request target {raw[:200]!r} is not a path (e.g. /v1/chat/completions)")
                return
            raw = parts.path
        await app(Head(head.method, prefix + raw, head.query_string, head.headers), exchange)

    return handle
