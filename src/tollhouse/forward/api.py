"""GET /api/v1/hosts: the hosts reached through the forward proxy (this gateway's and its agents'), known AI
services flagged; POST /api/v1/agent/hosts: an agent's report of its own.

Each host: connections (intercepted and denied among them), bytes up and down (tunnels), first and last seen,
the people who used it, `known_ai` and `vendor` (forward/catalogue.py), and `managed` (intercepted, so governed).
Filters: `known_ai=true|false`, `managed=true|false`, `since` (ms), `limit`.
"""

from __future__ import annotations

from typing import Any

from tollhouse.forward.catalogue import vendor_of
from tollhouse.forward.hostmatch import HostList
from tollhouse.forward.hosts import HostRow, list_hosts, save_agent_hosts
from tollhouse.forward.service import flush_hosts
from tollhouse.gateway import usage_params as params
from tollhouse.gateway.admin import BadParameter, api_error, int_param, read
from tollhouse.gateway.agent_api import agent_identity
from tollhouse.gateway.http import Request, Response, json_response
from tollhouse.gateway.policy_api import json_body
from tollhouse.gateway.state import GatewayState

_PARAMS = ("known_ai", "managed", "since", "limit")


def _flag(query: dict[str, str], name: str) -> bool | None:
    raw = query.get(name)
    if raw is None:
        return None
    if raw not in ("true", "false"):
        raise params.bad(f"query parameter {name!r} takes true or false, got {raw!r}")
    return raw == "true"


async def hosts(request: Request, state: GatewayState) -> Response:
    query = request.query
    params.check_names(query, _PARAMS)
    try:
        limit = int_param(query, "limit", 1000, 1, 100_000) or 1000
        since = int_param(query, "since", 0, 0, 2**62) or 0
    except BadParameter as exc:
        raise params.bad(str(exc)) from None
    known, managed = _flag(query, "known_ai"), _flag(query, "managed")
    rows = await host_rows(state, since)
    return json_response({"hosts": matching(rows, known, managed)[:limit]})


def matching(rows: list[dict[str, Any]], known: bool | None, managed: bool | None) -> list[dict[str, Any]]:
    """The `host_rows` whose `known_ai` is `known` and whose `managed` is `managed` (None: either)."""
    return [row for row in rows
            if (known is None or row["known_ai"] == known) and (managed is None or row["managed"] == managed)]


async def host_rows(state: GatewayState, since_ms: int) -> list[dict[str, Any]]:
    """Every host seen since `since_ms` (most recently seen first, at most 100,000), with its `vendor` (the known
    AI service it belongs to, or None), `known_ai`, and `managed` (intercepted here, or by an agent whose own
    intercept list names it). What the proxy saw up to now counts, not only what the flusher stored."""
    await flush_hosts(state)
    rows, _ = await read(state, lambda s: list_hosts(s, since_ms, 100_000))
    intercepted = HostList.of(state.settings.forward_proxy.intercept)
    for row in rows:
        vendor = vendor_of(row["host"])
        row["known_ai"] = vendor is not None
        row["vendor"] = vendor
        row["managed"] = intercepted.name_match(row["host"]) is not None or row["intercepted"] > 0
    return rows


MAX_REPORTED = 5000  # rows in one agent report
_INT_FIELDS = HostRow._fields[2:]


def _report_rows(data: object) -> list[HostRow] | str:
    """The rows of an agent's report, or what is wrong with it."""
    rows = data.get("hosts") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        return 'body must be {"hosts": [{"host", "person", "connections", "intercepted", "denied", "bytes_up", ' \
               '"bytes_down", "first_ms", "last_ms"}]}'
    if len(rows) > MAX_REPORTED:
        return f"at most {MAX_REPORTED} hosts in one report; got {len(rows)}"
    out: list[HostRow] = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            return f"hosts[{i}]: not an object"
        host, person = row.get("host"), row.get("person")
        if not isinstance(host, str) or not 0 < len(host) <= 253 or not isinstance(person, str) \
                or not 0 < len(person) <= 256:
            return f"hosts[{i}]: host (1-253 characters) and person (1-256) must be strings"
        numbers = [row.get(name) for name in _INT_FIELDS]
        if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**62 for n in numbers):
            return f"hosts[{i}]: {', '.join(_INT_FIELDS)} must be integers >= 0"
        out.append(HostRow(host.lower(), person, *(int(n) for n in numbers if isinstance(n, int))))
    return out


async def agent_hosts(request: Request, state: GatewayState) -> Response:
    """POST /api/v1/agent/hosts (an enrollment token): an agent's forward-proxy host totals."""
    who = await agent_identity(request, state)
    if isinstance(who, Response):
        return who
    agent = (request.header("x-tollhouse-agent-id") or "")[:128]
    if not agent:
        return api_error(400, "send the agent's id in X-Tollhouse-Agent-Id", "bad_request")
    rows = _report_rows(await json_body(request))
    if isinstance(rows, str):
        return api_error(400, rows, "bad_request")
    await state.runner.run(lambda s: save_agent_hosts(s, agent, rows))
    return json_response({"stored": len(rows)})
