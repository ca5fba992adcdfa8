"""The exemption queue (/console/exemptions): pending requests with approve (hours, optionally widened to more
models or providers) and deny, approved overrides still in force with revoke, and the history with filters.
Every signed-in role reads it; only policy roles decide (their forms are not shown to the others, and a post by
them is refused by the router). The requester's own pages (the form, filing, the status page) stay public in
gateway/exemption_console.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from tollhouse.console import csrf, dates
from tollhouse.console.forms import form_post, see_other
from tollhouse.console.pages import ALL_ROLES, POLICY, Page
from tollhouse.console.render import render
from tollhouse.control.exemptions import (
    DEFAULT_HOURS,
    MAX_FIELD,
    MAX_HOURS,
    MAX_JUSTIFICATION,
    MIN_HOURS,
    ExemptionError,
)
from tollhouse.events.records import APPROVED, DENIED, OVERRIDE, PENDING, REVOKED, Exemption
from tollhouse.gateway import exemptions
from tollhouse.gateway.console_session import ConsoleUser
from tollhouse.gateway.exemption_console import scope_words
from tollhouse.gateway.exemption_routes import elsewhere
from tollhouse.gateway.http import Request, Response
from tollhouse.gateway.state import GatewayState

PATH = "/console/exemptions"
STATUSES = (PENDING, APPROVED, DENIED, REVOKED)
PAGE_SIZE = 100
DECISION_BYTES = 64 * 1024
_SCAN = 5000  # the newest requests the history filters look through


@dataclass(frozen=True, slots=True)
class Filters:
    status: str
    subject: str
    rule: str
    since: str  # YYYY-MM-DD, in the org's timezone
    until: str
    page: int

    def problems(self) -> list[str]:
        out = []
        if self.status and self.status not in STATUSES:
            out.append(f"status {self.status!r} is not one of {', '.join(STATUSES)}")
        return out + dates.problems(**{"from": self.since, "to": self.until})

    def query(self, page: int) -> str:
        fields = {"status": self.status, "subject": self.subject, "rule": self.rule, "from": self.since,
                  "to": self.until, "page": str(page)}
        return urlencode({k: v for k, v in fields.items() if v})


def _filters(query: dict[str, str]) -> Filters:
    page = query.get("page", "1")
    return Filters(query.get("status", ""), query.get("subject", "").strip(), query.get("rule", "").strip(),
                   query.get("from", ""), query.get("to", ""), int(page) if page.isdigit() and page != "0" else 1)


def in_force(x: Exemption, now_ms: int) -> bool:
    return x.status == APPROVED and x.decision_kind == OVERRIDE and (x.expires_ms or 0) > now_ms


def _row(x: Exemption, now_ms: int) -> dict[str, Any]:
    call = " / ".join(v for v in (x.provider, x.model, x.team, x.project) if v)
    return {"x": x, "call": call, "covers": scope_words(x), "in_force": in_force(x, now_ms),
            "expires": x.expires_ms if x.status in (APPROVED, REVOKED) else None}


async def queue(request: Request, state: GatewayState, user: ConsoleUser) -> Response:
    redirect = elsewhere(request, state)
    if redirect is not None:
        return redirect
    f = _filters(request.query)
    problems = f.problems()
    now_ms = int(state.clock() * 1000)
    pending = await state.runner.run(lambda s: s.list_exemptions(PENDING, 500))
    history: list[Exemption] = []
    if not problems:
        status = f.status or None
        found = await state.runner.run(lambda s: s.list_exemptions(status, _SCAN))
        lo, hi = dates.bounds_ms(f.since, f.until, ZoneInfo(state.settings.ledger.timezone))
        history = [x for x in found if (not f.subject or f.subject.lower() in x.subject.lower())
                   and (not f.rule or f.rule == x.rule_id) and (lo is None or x.created_ms >= lo)
                   and (hi is None or x.created_ms < hi)
                   and (f.status or x.status != PENDING)]
    first = (f.page - 1) * PAGE_SIZE
    shown = history[first:first + PAGE_SIZE]
    return render(request, state, user, "exemptions.html", "Exemption requests",
                  who=user.name, can_decide=user.role in POLICY,
                  pending=[_row(x, now_ms) for x in reversed(pending)],  # oldest first
                  history=[_row(x, now_ms) for x in shown], total=len(history), filters=f, problems=problems,
                  statuses=STATUSES, rules=sorted({r.id for r in state.policy.current.rules}),
                  prev_query=f.query(f.page - 1) if f.page > 1 else None,
                  next_query=f.query(f.page + 1) if first + PAGE_SIZE < len(history) else None,
                  limits={"min": MIN_HOURS, "max": MAX_HOURS, "default": DEFAULT_HOURS, "field": MAX_FIELD,
                          "text": MAX_JUSTIFICATION})


async def _decide(request: Request, state: GatewayState, user: ConsoleUser, form: dict[str, str],
                  action: exemptions.Decide) -> Response:
    redirect = elsewhere(request, state)
    if redirect is not None:
        return redirect
    form.pop(csrf.FIELD, None)
    who = user.name  # a session's user, or with the admin token X-Tollhouse-Actor (access.py signed them in)
    try:
        await action(state, request.params["id"], form, who)
    except ExemptionError as exc:
        return render(request, state, user, "exemption_refused.html", "Not decided", exc.status,
                      messages=exc.messages)
    return see_other(PATH)


async def approve(request: Request, state: GatewayState, user: ConsoleUser, form: dict[str, str]) -> Response:
    return await _decide(request, state, user, form, exemptions.approve)


async def deny(request: Request, state: GatewayState, user: ConsoleUser, form: dict[str, str]) -> Response:
    return await _decide(request, state, user, form, exemptions.deny)


async def revoke(request: Request, state: GatewayState, user: ConsoleUser, form: dict[str, str]) -> Response:
    return await _decide(request, state, user, form, exemptions.revoke)


PAGES = (
    Page("GET", PATH, queue, ALL_ROLES, "Exemptions"),
    Page("POST", f"{PATH}/{{id}}/approve", form_post(approve, DECISION_BYTES), POLICY),
    Page("POST", f"{PATH}/{{id}}/deny", form_post(deny, DECISION_BYTES), POLICY),
    Page("POST", f"{PATH}/{{id}}/revoke", form_post(revoke, DECISION_BYTES), POLICY),
)
