"""Usage that reaches the store without passing through this process's reservations (calls an agent served
and shipped): which counters it counts toward, as plain data the ledgers add to their counters.

A counter counts every event of its scope (`Store.usage_history` is the same query): the event's subject,
its team and every team above it, its project, and the organisation. Refused calls count nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from tollhouse.events.model import CallEvent
from tollhouse.ledger.types import Charge

Scope = tuple[str, str]  # (scope kind, id) of a counter: ("team", "ml"), ("org", "*"), ...


class StoredUsage(NamedTuple):
    """One stored call as its ledgers see it."""

    ts_ms: int
    scopes: tuple[Scope, ...]
    charge: Charge


def event_scopes(event: CallEvent, team_chain: Callable[[str | None], Sequence[str]]) -> tuple[Scope, ...]:
    """Every counter scope the event counts toward (`team_chain`: the team and the teams above it)."""
    out: list[Scope] = [("subject", event.subject), ("org", "*")]
    out += [("team", team) for team in team_chain(event.team)]
    if event.project:
        out.append(("project", event.project))
    return tuple(out)


def stored_usage(events: Sequence[CallEvent], team_chain: Callable[[str | None], Sequence[str]]
                 ) -> list[StoredUsage]:
    """The events that count (not refused, something used) as ledger usage."""
    out = []
    for e in events:
        if e.decision == "block":
            continue
        charge = Charge(e.provider, e.cost_nusd or 0, e.input_tokens, e.output_tokens, 1 if e.status < 400 else 0)
        if any(charge.vector()):
            out.append(StoredUsage(e.ts_ms, event_scopes(e, team_chain), charge))
    return out
