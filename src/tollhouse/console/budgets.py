"""The caps in force and how far each is used: for the overview's budgets at risk and a team's page.

A monthly cap's month-end figure is a linear projection of its use over the time elapsed in the billing month
(ledger.billing_day in ledger.timezone); the date it runs out is when that line crosses the limit."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from tollhouse.gateway.state import GatewayState
from tollhouse.gateway.usage_params import org_zone
from tollhouse.ledger.types import NANO_PER_USD
from tollhouse.ledger.windows import window_bounds_ms
from tollhouse.policy.engine import Cap

AT_RISK = 0.8  # used, or projected at month end, at least this share of the limit


@dataclass(frozen=True)
class CapStatus:
    rule_id: str
    counter: str  # "team platform", "org", "person alice"
    metric: str  # spend | tokens | input_tokens | output_tokens | requests
    window: str  # month | 24h | ...
    monthly: bool
    severity: str
    limit: Decimal  # dollars for spend, else units
    used: Decimal
    projected: Decimal | None  # at the end of the billing month (monthly caps)
    exhausted_ms: int | None  # when the projection reaches the limit, if within the month
    start_ms: int
    end_ms: int

    @property
    def share(self) -> float:
        return float(self.used / self.limit) if self.limit else 0.0

    @property
    def projected_share(self) -> float | None:
        return None if self.projected is None or not self.limit else float(self.projected / self.limit)

    @property
    def at_risk(self) -> bool:
        return self.share >= AT_RISK or (self.projected_share or 0.0) >= 1.0

    @property
    def money(self) -> bool:
        return self.metric == "spend"


def counter_label(counter: tuple[str, str]) -> str:
    scope, ident = counter
    return "org" if scope == "org" else f"{'person' if scope == 'subject' else scope} {ident}"


def project(used: int, limit: int, start_ms: int, end_ms: int, now_ms: int) -> tuple[int, int | None]:
    """(use at `end_ms`, when use reaches `limit` or None) if use keeps its pace since `start_ms`."""
    elapsed = max(now_ms - start_ms, 1)
    if used <= 0:
        return 0, None
    projected = used * (end_ms - start_ms) // elapsed
    if used >= limit:
        return projected, now_ms  # already there
    reach = start_ms + limit * elapsed // used
    return projected, reach if reach < end_ms else None


async def status(state: GatewayState, cap: Cap, now_ms: int) -> CapStatus:
    tz, billing_day = org_zone(state)
    start, end = window_bounds_ms(cap.window, now_ms, billing_day, tz)
    used = await state.ledger.cap_used(cap, now_ms)
    scale = NANO_PER_USD if cap.metric == "spend" else 1
    projected: Decimal | None = None
    exhausted: int | None = None
    if cap.window.monthly:
        raw, exhausted = project(used, cap.units, start, end, now_ms)
        projected = Decimal(raw) / scale
    elif used >= cap.units:
        exhausted = now_ms
    return CapStatus(cap.rule.id, counter_label(cap.counter), cap.metric, cap.window.label, cap.window.monthly,
                     cap.rule.severity.name, Decimal(cap.units) / scale, Decimal(used) / scale, projected, exhausted,
                     start, end)


def caps_for(state: GatewayState, counters: Iterable[tuple[str, str]]) -> list[Cap]:
    """The caps in force whose counter is one of `counters` ((scope, id): org/*, team, project, subject)."""
    policy, directory = state.policy.current, state.directory.current
    seen: set[tuple[str, tuple[str, str, str]]] = set()
    out: list[Cap] = []
    for scope, ident in counters:
        subject = directory.subject(ident) if scope == "subject" else None
        for cap in policy.caps_counting(scope, ident, subject):
            if (cap.rule.id, cap.key) not in seen:
                seen.add((cap.rule.id, cap.key))
                out.append(cap)
    return out


async def statuses(state: GatewayState, counters: Iterable[tuple[str, str]], now_ms: int) -> list[CapStatus]:
    """Each cap in force on these counters, most used (or projected) first."""
    found = [await status(state, cap, now_ms) for cap in caps_for(state, counters)]
    found.sort(key=lambda c: (-max(c.share, c.projected_share or 0.0), c.rule_id, c.counter))
    return found
