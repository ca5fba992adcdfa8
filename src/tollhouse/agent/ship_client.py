"""POST a batch of events to the control plane's telemetry ingest and say what the answer means.

The answer is one of: Acked (200), Refused (400/413: the batch, or the events it names, are invalid and
will never be taken), Unauthorized (401/403: the token was revoked) or Failed (the control plane is down,
overloaded or answered something unexpected: retry later). Only the configured proxy is used, never the
environment's; through an HTTP(S) proxy an https control plane is reached with CONNECT.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson
from pyreqwest.client import Client

from tollhouse.agent.control_request import control_post
from tollhouse.gateway.upstream import ConnectError, RequestError, RequestTimeoutError, build_client

INGEST_PATH = "/api/v1/agent/events"
_RETRYABLE_4XX = frozenset({404, 408, 409, 425, 429})  # a control plane being deployed, or asking to slow down


class Acked(NamedTuple):
    received: int
    stored: int
    duplicates: int


class Refused(NamedTuple):
    status: int
    bad: list[int]  # indices of the events the control plane named as invalid; empty: the batch as a whole
    problems: list[str]


class Unauthorized(NamedTuple):
    status: int
    message: str


class Failed(NamedTuple):
    kind: str  # unreachable | timeout | server_error | unexpected
    detail: str


Answer = Acked | Refused | Unauthorized | Failed


def _error_message(data: Any) -> str:
    err = data.get("error") if isinstance(data, dict) else None
    return str(err.get("message", "")) if isinstance(err, dict) else ""


def _refused(status: int, data: Any) -> Refused:
    err = data.get("error") if isinstance(data, dict) else None
    err = err if isinstance(err, dict) else {}
    bad = err.get("bad")
    problems = err.get("problems")
    return Refused(status,
                   [i for i in bad if isinstance(i, int) and not isinstance(i, bool)] if isinstance(bad, list) else [],
                   [str(p) for p in problems] if isinstance(problems, list) else [_error_message(data)
                                                                                  or f"HTTP {status}"])


def _acked(data: Any) -> Answer:
    if not isinstance(data, dict) or not all(isinstance(data.get(k), int) for k in Acked._fields):
        return Failed("unexpected", f"a 200 answer without {{received, stored, duplicates}}: {str(data)[:200]}")
    return Acked(data["received"], data["stored"], data["duplicates"])


def _cause(exc: RequestError) -> str:
    """The innermost cause the client reports (e.g. 'Connection refused', a certificate problem)."""
    causes = (exc.details or {}).get("causes") or []
    return str(causes[-1]["message"]) if causes else exc.message


class ShipClient:
    def __init__(self, control_plane_url: str, token: str, proxy: str | None, timeout_s: float,
                 ca_pem: bytes | None = None, agent_id: str = "") -> None:
        self.url = control_plane_url.rstrip("/") + INGEST_PATH
        self.token = token
        self.agent_id = agent_id  # the control plane counts the batch's spend against this agent's leases
        self._client: Client = build_client(timeout_s, proxy, ca_pem)

    async def post(self, body: bytes) -> Answer:
        request = control_post(self._client, self.url, self.token, self.agent_id, body)
        try:
            response = await request.send()
            status = response.status
            raw = bytes(await response.bytes())
        except RequestTimeoutError as exc:
            return Failed("timeout", f"no answer in time ({type(exc).__name__})")
        except ConnectError as exc:
            return Failed("unreachable", f"cannot connect: {_cause(exc)}")
        except RequestError as exc:
            return Failed("unreachable", f"{type(exc).__name__}: {_cause(exc)}")
        try:
            data = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            data = None
        if status == 200:
            return _acked(data)
        if status in (400, 413):
            return _refused(status, data)
        if status in (401, 403):
            return Unauthorized(status, _error_message(data) or f"HTTP {status}")
        kind = "server_error" if status >= 500 or status in _RETRYABLE_4XX else "unexpected"
        return Failed(kind, f"HTTP {status}: {_error_message(data) or raw[:200].decode('utf-8', 'replace')}")

    async def close(self) -> None:
        await self._client.close()
