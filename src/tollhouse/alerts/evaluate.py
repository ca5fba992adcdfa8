"""From finished calls to alerts (off the request path): rules that alert, deduplicated per rule and subject
within aligned windows (the first firing is sent at once, the count follows when the window closes), and
budget thresholds per cap (each once per cap and period, with the projected month-end figure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from tollhouse.alerts.config import AlertsConfig
from tollhouse.alerts.handoff import Offered
from tollhouse.alerts.model import Alert, Stored
from tollhouse.alerts.routing import Router, Target
from tollhouse.events.model import CallEvent
from tollhouse.ledger.types import CapUsage
from tollhouse.ledger.windows import window_bounds_ms
from tollhouse.policy.compiled import Rule, Severity
from tollhouse.policy.engine import Violation

NANO = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Raised:
    alert: Alert
    targets: tuple[Target, ...]
    count: int = 1  # firings (a windowed alert adds them to its count)


def usd(nusd: int | float | Decimal) -> str:
    value = float(nusd) / NANO
    return f"${value:,.2f}" if value < 1000 else f"${value:,.0f}"


def pct(fraction: float) -> str:
    """Whole percent, rounded down: 99.5 % of a cap is not "100 %"."""
    return f"{int(fraction * 100 + 1e-9)}%"


def alerting(rule: Rule) -> bool:
    """Alert and WARN rules alert; any rule that names `notify` does too."""
    return rule.severity is Severity.warn or bool(rule.notify)


def _hhmm(ms: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ms / 1000, tz).strftime("%Y-%m-%d %H:%M %Z")


class Evaluator:
    def __init__(self, cfg: AlertsConfig, router: Router, console_url: str, billing_day: int, tz: ZoneInfo) -> None:
        self.cfg = cfg
        self.router = router
        self.console = console_url if console_url.endswith("/") else console_url + "/"
        self.billing_day = billing_day
        self.tz = tz
        self._window_ms = int(cfg.dedup_window_s * 1000)
        self._thresholds_done: set[str] = set()  # budget alert keys raised by this process (skip the store)
        self._known: dict[tuple[str, str, int], str] = {}  # rule dedup windows open here -> their alert id

    def _links(self, e: CallEvent) -> tuple[tuple[str, str], ...]:
        links = [("Policy", self.console + "policy")]
        if e.team:
            links.append((f"Team {e.team}", self.console + "teams/" + quote(e.team, safe="")))
        links.append(("Events", self.console.removesuffix("console/") + "api/v1/events?subject=" +
                      quote(e.subject, safe="")))
        return tuple(links)

    def evaluate(self, batch: Sequence[Offered]) -> tuple[list[Raised], dict[str, int]]:
        """New alerts, and firings to add to alerts raised already (alert id -> count)."""
        window = self._window_ms
        fired: dict[tuple[str, str, int], list[Any]] = {}  # (rule, subject, window start) -> [event, v, enforced, n]
        caps: dict[tuple[str, tuple[str, str, str]], tuple[CallEvent, CapUsage]] = {}
        for event, verdict in batch:
            decision = verdict.decision
            if decision is not None:
                for v in decision.violations:
                    rule = v.rule
                    if rule.severity is not Severity.warn and not rule.notify:
                        continue
                    key = (rule.id, event.subject, event.ts_ms - event.ts_ms % window)
                    seen = fired.get(key)
                    if seen is None:
                        fired[key] = [event, v, verdict.enforced, 1]
                    else:
                        seen[3] += 1
            for u in verdict.usage:  # per cap, its highest count in the batch
                ck = (u.cap.rule.id, u.cap.key)
                had = caps.get(ck)
                if had is None or u.used >= had[1].used:
                    caps[ck] = (event, u)
        raised: list[Raised] = []
        bumps: dict[str, int] = {}
        known = self._known
        for key, (event, v, enforced, count) in fired.items():
            alert_id = known.get(key)
            if alert_id is not None:
                bumps[alert_id] = bumps.get(alert_id, 0) + count
                continue
            r = self._rule_alert(f"rule:{key[0]}:{key[1]}:{key[2]}", event, v, enforced, count)
            known[key] = r.alert.id
            raised.append(r)
        for event, u in caps.values():
            found = self._threshold(event, u)
            if found is not None:
                raised.append(found)
        return raised, bumps

    def expire(self, now_ms: int) -> None:
        """Forget dedup windows that are over (their alerts are closed by the store)."""
        cutoff = now_ms - self._window_ms
        for key in [k for k in self._known if k[2] < cutoff]:
            del self._known[key]

    def forget(self, raised: Sequence[Raised]) -> None:
        """These could not be stored: raise them again when they fire again."""
        ids = {r.alert.id for r in raised}
        for key in [k for k, v in self._known.items() if v in ids]:
            del self._known[key]
        for r in raised:
            self._thresholds_done.discard(r.alert.key)

    def _rule_alert(self, key: str, e: CallEvent, v: Violation, enforced: bool, count: int) -> Raised:
        rule = v.rule
        start = e.ts_ms - e.ts_ms % self._window_ms
        mode = "" if enforced else " (observe mode: nothing was enforced)"
        own = f" {rule.message.rstrip('.')}." if rule.message else ""
        text = (f"{e.subject} ({e.team or 'no team'}) called {e.requested_model or e.model or 'an unknown model'} "
                f"on {e.provider}: {v.reason}.{own} The call was {e.decision}{mode}. Further firings for this "
                f"subject are counted until {_hhmm(start + self._window_ms, self.tz)}.")
        fields = [("Rule", f"{rule.id} ({rule.type_name})"), ("Subject", e.subject), ("Team", e.team or "-"),
                  ("Model", e.requested_model or e.model or "-"), ("Provider", e.provider),
                  ("Cost", usd(e.cost_nusd) if e.cost_nusd is not None else "-"), ("Decision", e.decision)]
        if e.project:
            fields.append(("Project", e.project))
        severity = "critical" if rule.severity >= Severity.block else "warning"
        alert = Alert(key, "rule", severity, f"Rule {rule.id} fired for {e.subject}", text, tuple(fields),
                      self._links(e), closes_ms=start + self._window_ms)
        return Raised(alert, self.router.targets(rule.notify), count)

    def summary(self, closed: Stored, targets: tuple[Target, ...]) -> Raised | None:
        """A windowed alert that fired more than once: how many times, when its window closed."""
        if closed.count <= 1:
            return None
        fields = dict(closed.fields)
        text = (f"Rule {fields.get('Rule', '?')} fired {closed.count} times for {fields.get('Subject', '?')} in "
                f"the {self.cfg.dedup_window_s / 60:g} minutes after the first alert ({closed.id}); one message was "
                "sent for all of them.")
        alert = Alert(f"summary:{closed.id}", "rule.summary", closed.severity,
                      f"{closed.title}: {closed.count} times", text, closed.fields, closed.links)
        return Raised(alert, targets, closed.count)

    def _threshold(self, e: CallEvent, u: CapUsage) -> Raised | None:
        cap = u.cap
        if u.limit <= 0 or cap.waived:
            return None
        value = u.used if e.decision == "block" else u.used + _actual(e, cap.metric)
        fraction = value / u.limit
        crossed = [t for t in self.cfg.budget_thresholds if fraction >= t]
        if not crossed:
            return None
        threshold = crossed[-1]
        if cap.window.monthly:
            start, end = window_bounds_ms(cap.window, e.ts_ms, self.billing_day, self.tz)
        else:
            span = cap.window.seconds * 1000
            start = e.ts_ms - e.ts_ms % span
            end = start + span
        scope, ident = cap.counter
        key = f"budget:{cap.rule.id}:{scope}:{ident}:{cap.window.label}:{start}:{threshold:g}"
        if key in self._thresholds_done:
            return None
        self._thresholds_done.add(key)
        return Raised(self._budget_alert(key, e, u, value, fraction, threshold, start, end),
                      self.router.targets(cap.rule.notify))

    def _budget_alert(self, key: str, e: CallEvent, u: CapUsage, value: int, fraction: float, threshold: float,
                      start: int, end: int) -> Alert:
        cap = u.cap
        scope, ident = cap.counter
        who = "the organisation" if scope == "org" else f"{scope} {ident}"
        spend = cap.metric == "spend"
        shown = usd if spend else (lambda n: f"{int(n):,} {cap.metric.replace('_', ' ')}")
        elapsed = max(e.ts_ms - start, 60_000)
        projected = value * (end - start) / elapsed
        period = "month" if cap.window.monthly else cap.window.label
        pace = (f" At this pace it reaches {shown(projected)} by the end of the {period} "
                f"({pct(projected / u.limit)} of the cap).") if cap.window.monthly else ""
        kind = "monthly" if cap.window.monthly else f"{period} rolling"
        text = (f"{who} has used {shown(value)} of its {shown(u.limit)} {kind} cap in rule {cap.rule.id} "
                f"({pct(fraction)}, past the {pct(threshold)} threshold).{pace}")
        if threshold >= 1:
            text += " Calls over the cap are " + ("refused." if cap.rule.severity >= Severity.block else
                                                  f"{cap.rule.severity.name}ed, not refused.")
        fields = [("Rule", f"{cap.rule.id} ({cap.rule.type_name})"), ("Scope", who),
                  ("Used", f"{shown(value)} of {shown(u.limit)} ({pct(fraction)})"),
                  ("Threshold", f"{pct(threshold)}"),
                  ("Period", f"{_hhmm(start, self.tz)} to {_hhmm(end, self.tz)}")]
        if cap.window.monthly:
            fields.append(("Projected", shown(projected)))
        severity = "critical" if threshold >= 1 else ("warning" if threshold >= 0.8 else "info")
        title = f"Budget {cap.rule.id}: {who} at {pct(fraction)} of its {shown(u.limit)} cap"
        return Alert(key, "budget", severity, title, text, tuple(fields), self._links(e))


def _actual(e: CallEvent, metric: str) -> int:
    if metric == "spend":
        return e.cost_nusd or 0
    if metric == "tokens":
        return e.input_tokens + e.output_tokens
    if metric == "input_tokens":
        return e.input_tokens
    if metric == "output_tokens":
        return e.output_tokens
    return 1  # requests


def now_iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")
