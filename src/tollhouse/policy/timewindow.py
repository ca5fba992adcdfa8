"""Time windows for rules: days of the week and hour ranges in an IANA timezone.

Accepted forms (all evaluated in local wall-clock time of the zone, so DST is handled by zoneinfo):
  {"days": [1,2,3,4,5], "hours": [8, 18]}          ISO weekdays (1 = Monday), hours [start, end)
  {"days": "mon-fri", "hours": "9-17"}              cron-like ranges, lists with commas
  {"days": "sat,sun", "hours": "22:00-06:30"}       minutes allowed; a range may cross midnight
An end hour is exclusive: hours [8, 18] is 08:00 up to 17:59.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_DAY_NAMES = {"mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6, "sun": 7}
_FULL_DAY_NAMES = {"monday": 1, "tuesday": 2, "wednesday": 3, "thursday": 4, "friday": 5, "saturday": 6,
                   "sunday": 7}


class WindowError(ValueError):
    """A time window a user wrote wrong; the message shows a valid example."""


@dataclass(frozen=True, slots=True)
class TimeWindow:
    days: frozenset[int]  # ISO weekdays 1..7
    minutes: tuple[tuple[int, int], ...]  # [start, end) minute-of-day ranges; start > end crosses midnight
    tz: ZoneInfo

    def contains(self, now: datetime) -> bool:
        """Is the instant `now` (timezone-aware) inside the window, in the window's zone?"""
        local = now.astimezone(self.tz)
        minute = local.hour * 60 + local.minute
        day = local.isoweekday()
        for start, end in self.minutes:
            if start < end:
                if day in self.days and start <= minute < end:
                    return True
            elif minute >= start:  # evening part of an overnight range belongs to the day it starts
                if day in self.days:
                    return True
            elif minute < end and (day - 2) % 7 + 1 in self.days:  # morning part: the previous day's
                return True
        return False


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise WindowError(f"unknown timezone {name!r}: use an IANA name such as 'Europe/London' or 'UTC'") \
            from None


def parse_days(raw: object) -> frozenset[int]:
    if raw is None:
        return frozenset(range(1, 8))
    if isinstance(raw, list) and not raw:
        raise WindowError("days: an empty list matches no day; leave days out for every day")
    if isinstance(raw, list):
        days: set[int] = set()
        for d in raw:
            if isinstance(d, bool) or not isinstance(d, int | str):
                raise WindowError(f"days: {d!r} is not a day; use 1-7 (1 = Monday) or names like 'mon'")
            days |= parse_days(str(d)) if isinstance(d, str) else {_day_number(d)}
        return frozenset(days)
    if not isinstance(raw, str) or not raw.strip():
        raise WindowError("days: use a list like [1,2,3,4,5] or a range like 'mon-fri'")
    out: set[int] = set()
    for part in raw.lower().replace(" ", "").split(","):
        if "-" in part:
            a, _, b = part.partition("-")
            lo, hi = _day(a), _day(b)
            span = range(lo, hi + 1) if lo <= hi else [*range(lo, 8), *range(1, hi + 1)]
            out.update(span)
        else:
            out.add(_day(part))
    return frozenset(out)


def _day(token: str) -> int:
    if token.isdecimal() and token.isascii() and len(token) <= 2:
        return _day_number(int(token))
    if token in _DAY_NAMES:
        return _DAY_NAMES[token]
    if token in _FULL_DAY_NAMES:
        return _FULL_DAY_NAMES[token]
    raise WindowError(f"days: {token!r} is not a day; use 1-7 (1 = Monday) or mon, tue, ... sun")


def _day_number(d: int) -> int:
    if d == 0:
        return 7  # cron's Sunday
    if not 1 <= d <= 7:
        raise WindowError(f"days: {d} is out of range; use 1-7 (1 = Monday, 7 = Sunday)")
    return d


def parse_hours(raw: object) -> tuple[tuple[int, int], ...]:
    if raw is None:
        return ((0, 24 * 60),)
    if isinstance(raw, list) and len(raw) == 2 and all(isinstance(h, int) and not isinstance(h, bool)
                                                       for h in raw):
        return (_range(_minute(str(raw[0])), _minute(str(raw[1]))),)
    if isinstance(raw, list) and raw and all(isinstance(h, str) for h in raw):
        return tuple(r for item in raw for r in parse_hours(item))
    if not isinstance(raw, str) or "-" not in raw:
        raise WindowError("hours: use [8, 18] (08:00 to 18:00), '9-17', or '22:00-06:00' (crosses midnight)")
    out = []
    for part in raw.replace(" ", "").split(","):
        a, sep, b = part.partition("-")
        if not sep:
            raise WindowError(f"hours: {part!r} is not a range; write it as '9-17' or '09:00-17:30'")
        out.append(_range(_minute(a), _minute(b)))
    return tuple(out)


def _range(start: int, end: int) -> tuple[int, int]:
    if start == end:
        raise WindowError("hours: a range must not start and end at the same time")
    return (start, end)


def _digits(text: str, most: int) -> bool:
    return text.isascii() and text.isdecimal() and 0 < len(text) <= most


def _minute(token: str) -> int:
    h, sep, m = token.partition(":")
    if not _digits(h, 2) or ((sep and not _digits(m, 2)) or (sep and len(m) != 2)):
        raise WindowError(f"hours: {token!r} is not a time; use H, HH or HH:MM")
    hour, minute = int(h), int(m) if sep else 0
    if not (0 <= hour <= 24 and 0 <= minute < 60) or (hour == 24 and minute):
        raise WindowError(f"hours: {token!r} is out of range (00:00 to 24:00)")
    return hour * 60 + minute


def parse_window(raw: object, tz_name: str) -> TimeWindow:
    if not isinstance(raw, dict):
        raise WindowError('window: use an object such as {"days": [1,2,3,4,5], "hours": [8, 18]}')
    unknown = set(raw) - {"days", "hours", "timezone"}
    if unknown:
        raise WindowError(f"window: unknown key(s) {sorted(unknown)}; allowed: days, hours, timezone")
    tz_raw = raw.get("timezone", tz_name)
    return TimeWindow(days=parse_days(raw.get("days")), minutes=parse_hours(raw.get("hours")),
                      tz=zone(str(tz_raw)))
