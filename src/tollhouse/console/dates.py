"""Date filters of console pages: YYYY-MM-DD days in the org's timezone, as a half-open epoch-ms range."""

from __future__ import annotations

import datetime
from zoneinfo import ZoneInfo


def day(value: str) -> datetime.date | None:
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        return None


def problems(**days: str) -> list[str]:
    """What is wrong with date fields (name → value as typed; empty: not given)."""
    return [f"{name} {value!r} is not a date; use YYYY-MM-DD" for name, value in days.items()
            if value and day(value) is None]


def bounds_ms(since: str, until: str, zone: ZoneInfo) -> tuple[int | None, int | None]:
    """[start of `since`, end of `until`) in epoch ms; None where not given (or not a date)."""
    def start(d: datetime.date) -> int:
        return int(datetime.datetime.combine(d, datetime.time(), zone).timestamp() * 1000)

    lo, hi = day(since) if since else None, day(until) if until else None
    return (start(lo) if lo else None, start(hi + datetime.timedelta(days=1)) if hi else None)
