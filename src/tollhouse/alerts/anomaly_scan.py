"""The periodic anomaly scan: hourly usage per team and per person from the store, judged by alerts/anomaly.py,
turned into alerts (one per team or person and day or hour, naming every metric that is out of line)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from urllib.parse import quote
from zoneinfo import ZoneInfo

from tollhouse.alerts import anomaly
from tollhouse.alerts.anomaly import Finding, Totals
from tollhouse.alerts.config import AnomalyConfig
from tollhouse.alerts.model import Alert
from tollhouse.events.store import Store

HOUR_MS = 3_600_000
_COLUMNS = {"team": "team", "person": "subject"}


def history_since_ms(now_ms: int, cfg: AnomalyConfig) -> int:
    return now_ms - (cfg.weeks * 7 + 2) * 24 * HOUR_MS


def hourly_usage(store: Store, scope: str, since_ms: int) -> dict[str, dict[int, Totals]]:
    """key (team or subject) -> hour since the epoch -> (USD, tokens, calls), calls the gateway let through."""
    column = _COLUMNS[scope]
    rows = store.db.query(
        f"SELECT {column} AS k, ts_ms / {HOUR_MS} AS h, COALESCE(SUM(cost_nusd), 0) AS c, "
        "SUM(input_tokens + output_tokens) AS t, COUNT(*) AS n FROM events "
        f"WHERE ts_ms >= ? AND {column} IS NOT NULL AND decision != 'block' GROUP BY {column}, ts_ms / {HOUR_MS}",
        (since_ms,))
    out: dict[str, dict[int, Totals]] = defaultdict(dict)
    for r in rows:
        out[r["k"]][int(r["h"])] = (int(r["c"]) / 1e9, float(r["t"] or 0), float(r["n"]))
    return dict(out)


def by_day(hours: Mapping[int, Totals], tz: ZoneInfo) -> dict[date, Totals]:
    days: dict[date, Totals] = {}
    for h, (c, t, n) in hours.items():
        d = datetime.fromtimestamp(h * 3600, tz).date()
        a, b, e = days.get(d, anomaly.ZERO)
        days[d] = (a + c, b + t, e + n)
    return days


def scan(usage: Mapping[str, Mapping[int, Totals]], scope: str, now_ms: int, since_ms: int, tz: ZoneInfo,
         cfg: AnomalyConfig, console_url: str) -> list[Alert]:
    """Today and yesterday (their days), this hour and the last (their hours), for every key."""
    out: list[Alert] = []
    now_hour = now_ms // HOUR_MS
    today = datetime.fromtimestamp(now_ms / 1000, tz).date()
    for ident, hours in usage.items():
        first_hour = max(min(hours), since_ms // HOUR_MS)
        days = by_day(hours, tz)
        first_day = datetime.fromtimestamp(first_hour * 3600, tz).date()
        for day, when in ((today, "today"), (today - timedelta(days=1), "yesterday")):
            found = anomaly.daily(days, day, first_day, cfg)
            if found:
                out.append(_alert(scope, ident, f"day:{day.isoformat()}", when, f"{when} ({day:%a %d %b})", found,
                                  console_url))
        if cfg.hourly:
            for hour in (now_hour, now_hour - 1):
                found = anomaly.hourly(hours, hour, first_hour, tz, cfg)
                if found:
                    start = datetime.fromtimestamp(hour * 3600, tz)
                    when = f"between {start:%H}:00 and {start + timedelta(hours=1):%H}:00"
                    out.append(_alert(scope, ident, f"hour:{hour}", when, f"{start:%a %d %b %H}:00-"
                                      f"{start + timedelta(hours=1):%H}:00", found, console_url))
    return out


def _alert(scope: str, ident: str, bucket: str, when: str, period: str, found: list[Finding],
           console_url: str) -> Alert:
    sentences = [anomaly.explain(ident, when, f) for f in found]
    text = "; ".join(sentences[:1]) + "".join(f". Also: {s}" for s in sentences[1:]) + "."
    fields: list[tuple[str, str]] = [("Team" if scope == "team" else "Person", ident), ("Period", period)]
    for f in found:
        b = f.baseline
        fields.append((f.metric.capitalize(), f"{anomaly.amount(f.metric, f.value)} (usual "
                       f"{anomaly.amount(f.metric, b.low)}-{anomaly.amount(f.metric, b.high)}, median "
                       f"{anomaly.amount(f.metric, b.median)} over {b.samples} {f.usual}s)"))
    metric = "spend" if any(f.metric == "spend" for f in found) else found[0].metric
    links: list[tuple[str, str]] = []
    if scope == "team":
        links.append((f"Team {ident}", console_url + "teams/" + quote(ident, safe="")))
    links.append(("Usage", console_url + "usage"))
    title = f"Unusual {metric} for {'team' if scope == 'team' else 'person'} {ident} {when}"
    return Alert(f"anomaly:{scope}:{ident}:{bucket}", "anomaly", "warning", title, text, tuple(fields), tuple(links))
