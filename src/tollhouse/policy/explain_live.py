"""`tollhouse policy explain` with the organisation's live numbers: what each cap has used (the store's
settled spend, plus the budget leases agents hold), and the verdict `decide()` gives a call at the model's
worst case, the same function the gateway decides with."""

from __future__ import annotations

from collections.abc import Sequence
from zoneinfo import ZoneInfo

from tollhouse.directory import Directory
from tollhouse.events.store import LeaseRow, Store
from tollhouse.ledger.types import CapUsage, metric_of
from tollhouse.ledger.windows import month_id, window_bounds_ms
from tollhouse.money import fmt_usd
from tollhouse.policy.engine import Cap


def lease_outstanding(rows: Sequence[LeaseRow], cap: Cap, now_ms: int, billing_day: int, tz: ZoneInfo) -> int:
    """What agents' leases on this cap hold, as the control plane counts it (control/leases.py)."""
    period = month_id(now_ms, billing_day, tz) if cap.window.monthly else 0
    total = 0
    for r in rows:
        if r.rule != cap.rule.id or (r.scope, r.ident) != cap.counter or r.period != period:
            continue
        live = r.live and r.expires_ms > now_ms
        total += max(0, (r.granted if live else r.reported) - r.drawn)
    return total


def live_usage(store: Store, directory: Directory, caps: Sequence[Cap], need: dict[str, int], now_ms: int,
               billing_day: int, tz: ZoneInfo) -> list[CapUsage]:
    """Each cap's used (settled in its window, plus leases outstanding) and what a call of `need` (per metric)
    adds, as the ledger would give them to decide()."""
    leases = store.load_leases()
    out = []
    for cap in caps:
        scope, ident = cap.counter
        start, _ = window_bounds_ms(cap.window, now_ms, billing_day, tz)
        ids = directory.descendants(ident) if scope == "team" else (ident,)
        totals = store.usage_totals(scope, ids, start, now_ms + 1)
        vectors = [v for p, v in totals.items() if cap.providers is None or p in cap.providers]
        used = sum(metric_of(v, cap.metric) for v in vectors)
        used += lease_outstanding(leases, cap, now_ms, billing_day, tz)
        out.append(CapUsage(cap, used, need.get(cap.metric, 0) if cap.metric != "tokens" else
                            need.get("input_tokens", 0) + need.get("output_tokens", 0), cap.units, 0))
    return out


def usage_lines(usage: Sequence[CapUsage]) -> list[str]:
    lines = []
    for u in usage:
        cap = u.cap
        lines.append(f"  cap {cap.rule.id} ({cap.counter[0]} {cap.counter[1]}, {cap.window.label}, {cap.metric}): "
                     f"{_shown(cap, u.used)} of {_shown(cap, u.limit)} used (leases outstanding included); this "
                     f"call at its worst case adds {_shown(cap, u.need)}")
    return lines


def _shown(cap: Cap, amount: int) -> str:
    return fmt_usd(amount) if cap.metric == "spend" else f"{amount:,}"
