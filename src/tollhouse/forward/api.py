"""GET /api/v1/hosts: the hosts reached through the forward proxy, known AI services flagged.

Each host: connections (intercepted and denied among them), bytes up and down (tunnels), first and last seen,
the people who used it, `known_ai` and `vendor` (forward/catalogue.py), and `managed` (intercepted, so governed).
Filters: `known_ai=true|false`, `managed=true|false`, `since` (ms), `limit`.
"""

from __future__ import annotations

from typing import Any

from tollhouse.forward.catalogue import vendor_of
from tollhouse.forward.hostmatch import HostList
from tollhouse.forward.hosts import list_hosts
from tollhouse.forward.service import flush_hosts
from tollhouse.gateway import usage_params as params
from tollhouse.gateway.admin import BadParameter, int_param, read
from tollhouse.gateway.http import Request, Response, json_response
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
    await flush_hosts(state)  # what the proxy saw up to now, not only what the flusher stored
    rows, _ = await read(state, lambda s: list_hosts(s, since, 100_000))
    intercepted = HostList.of(state.settings.forward_proxy.intercept)
    out: list[dict[str, Any]] = []
    for row in rows:
        vendor = vendor_of(row["host"])
        row["known_ai"] = vendor is not None
        row["vendor"] = vendor
        row["managed"] = intercepted.name_match(row["host"]) is not None
        if (known is None or row["known_ai"] == known) and (managed is None or row["managed"] == managed):
            out.append(row)
    return json_response({"hosts": out[:limit]})
