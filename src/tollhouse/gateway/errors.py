"""The one error boundary: every error the gateway itself answers, in the caller's provider shape."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from tollhouse.providers.family import Family
from tollhouse.providers.protocols import protocol_for

DECISION_HEADER = "X-Tollhouse-Decision"


def error_response(family: Family, status: int, message: str, code: str,
                   extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                   decision: str = "allow") -> web.Response:
    body = protocol_for(family).error_body(status, message, code, dict(extra or {}))
    h = {DECISION_HEADER: decision}
    if headers:
        h.update(headers)
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=h)
