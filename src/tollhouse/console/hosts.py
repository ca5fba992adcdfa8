"""Hosts (/console/hosts, admin and auditor): what the forward proxy saw (this gateway's and every agent's
reports), per host: the known AI service it belongs to, whether it is managed (intercepted, so governed) or not,
connections, refusals, bytes each way, the people and agents that used it, first and last seen. The same rows as
`GET /api/v1/hosts` (`forward.api.host_rows`). A view shows all hosts, unmanaged AI services only (shadow AI),
or managed ones, seen in the last 1, 7, 30 or 90 days."""

from __future__ import annotations

from tollhouse.console.pages import AUDIT, Page
from tollhouse.console.render import render
from tollhouse.forward.api import host_rows, matching
from tollhouse.gateway.console_session import ConsoleUser
from tollhouse.gateway.http import Request, Response
from tollhouse.gateway.state import GatewayState

PATH = "/console/hosts"
DAYS = (1, 7, 30, 90)
# view -> (label, known_ai, managed): the filters of GET /api/v1/hosts (None: either)
VIEWS: dict[str, tuple[str, bool | None, bool | None]] = {
    "all": ("every host", None, None), "shadow": ("AI services not managed (shadow AI)", True, False),
    "managed": ("managed AI services", None, True)}
SHOWN = 1000  # rows on the page at most (the API pages further)
PEOPLE_SHOWN = 5


def _size(n: int) -> str:
    for unit, step in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= step:
            return f"{n / step:.1f} {unit}"
    return f"{n} B"


async def hosts_page(request: Request, state: GatewayState, user: ConsoleUser) -> Response:
    problems = []
    view = request.query.get("view", "all")
    if view not in VIEWS:
        problems.append(f"view must be one of {', '.join(VIEWS)}; got {view!r}")
        view = "all"
    raw_days = request.query.get("days", "30")
    days = int(raw_days) if raw_days.isdigit() and int(raw_days) in DAYS else None
    if days is None:
        problems.append(f"days must be one of {', '.join(map(str, DAYS))}; got {raw_days!r}")
        days = 30
    since_ms = int((state.clock() - days * 86400) * 1000)
    rows = await host_rows(state, since_ms)
    shadow = len(matching(rows, *VIEWS["shadow"][1:]))
    kept = matching(rows, *VIEWS[view][1:])
    shown = [{**r, "up": _size(r["bytes_up"]), "down": _size(r["bytes_down"]),
              "people_shown": r["people"][:PEOPLE_SHOWN], "people_more": max(len(r["people"]) - PEOPLE_SHOWN, 0)}
             for r in kept[:SHOWN]]
    return render(request, state, user, "hosts.html", "Hosts", 400 if problems else 200, rows=shown,
                  total=len(kept), seen=len(rows), shadow=shadow, view=view,
                  views={key: label for key, (label, _, _) in VIEWS.items()}, days=days,
                  day_choices=DAYS, problems=problems, proxy_on=state.settings.forward_proxy.port is not None,
                  shown_max=SHOWN)


PAGES = (Page("GET", PATH, hosts_page, AUDIT, "Hosts"),)
