"""The one error boundary: every error the gateway itself answers, in the caller's provider shape."""

from __future__ import annotations

from typing import Any

import orjson

from tollhouse.gateway.http import Response
from tollhouse.providers.family import Family
from tollhouse.providers.protocols import protocol_for

DECISION_HEADER = "x-tollhouse-decision"
SHOULD_RETRY_HEADER = "x-should-retry"


def error_body(family: Family, status: int, message: str, code: str, extra: dict[str, Any] | None = None) -> bytes:
    return orjson.dumps(protocol_for(family).error_body(status, message, code, dict(extra or {})))


def error_response(family: Family, status: int, message: str, code: str,
                   extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                   decision: str = "allow") -> Response:
    h = [("content-type", "application/json"), (DECISION_HEADER, decision)]
    if decision == "block":  # the OpenAI and Anthropic SDKs (and the tools built on them) honour it: no retry
        h.append((SHOULD_RETRY_HEADER, "false"))
    if headers:
        h += list(headers.items())
    return Response(status, error_body(family, status, message, code, extra), h)


def stream_error_event(family: Family, message: str, code: str) -> bytes:
    """An in-band error for a stream that broke after its headers were sent: the SDKs raise on it."""
    if family is Family.anthropic:
        body = orjson.dumps({"type": "error", "error": {"type": "api_error", "message": message, "code": code}})
        return b"event: error\ndata: " + body + b"\n\n"
    return b"data: " + error_body(family, 502, message, code, {"type": "upstream_error"}) + b"\n\n"
