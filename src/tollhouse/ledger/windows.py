"""Counting windows in time (pure: the time is passed in).

Calendar months start on a billing day at midnight in the organisation's timezone; rolling windows
are kept in buckets of 1/600 of the window (at least one second), so a rolling sum and the moment a
window frees up are exact to one bucket.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from tollhouse.policy.rules import Window

ROLLING_BUCKETS = 600
_MONTH = Window(monthly=True)


def month_start(ts: datetime, billing_day: int, tz: ZoneInfo) -> datetime:
    """Start of the billing month containing `ts` (aware), as an aware datetime in `tz`."""
    local = ts.astimezone(tz)
    year, month = local.year, local.month
    if local.day < billing_day:
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return datetime(year, month, min(billing_day, 28), tzinfo=tz)


def next_month_start(start: datetime) -> datetime:
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return datetime(year, month, start.day, tzinfo=start.tzinfo)


def month_id(ts_ms: int, billing_day: int, tz: ZoneInfo) -> int:
    """An integer naming the billing month of a Unix-ms instant: year * 12 + month index."""
    start = month_start(datetime.fromtimestamp(ts_ms / 1000, tz), billing_day, tz)
    return start.year * 12 + start.month - 1


class BillingMonths:
    """The billing month holding an instant, as (start ms, end ms, month id): computed once a month, not once a
    call (the last month looked up is kept)."""

    __slots__ = ("_billing_day", "_span", "_tz")

    def __init__(self, billing_day: int, tz: ZoneInfo) -> None:
        self._billing_day = billing_day
        self._tz = tz
        self._span = (0, 0, 0)

    def of(self, ts_ms: int) -> tuple[int, int, int]:
        span = self._span
        if span[0] <= ts_ms < span[1]:
            return span
        start, end = window_bounds_ms(_MONTH, ts_ms, self._billing_day, self._tz)
        span = self._span = (start, end, month_id(ts_ms, self._billing_day, self._tz))
        return span


def bucket_ms(window: Window) -> int:
    return max(1000, window.seconds * 1000 // ROLLING_BUCKETS)


def window_bounds_ms(window: Window, now_ms: int, billing_day: int, tz: ZoneInfo) -> tuple[int, int]:
    """[start, end) of the window that `now_ms` is in (rolling: the last `seconds`)."""
    if window.monthly:
        start = month_start(datetime.fromtimestamp(now_ms / 1000, tz), billing_day, tz)
        end = next_month_start(start)
        return int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    return now_ms - window.seconds * 1000, now_ms


def month_seconds_left(now_ms: int, billing_day: int, tz: ZoneInfo) -> int:
    _, end = window_bounds_ms(Window(monthly=True), now_ms, billing_day, tz)
    return max(1, (end - now_ms + 999) // 1000)

