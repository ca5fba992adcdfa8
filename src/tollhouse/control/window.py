"""The agent maintenance window: `DOW HH:MM-HH:MM` in the machine's local wall-clock time.

  Sun 02:00-04:00    Sunday early hours only
  Any 23:00-02:00    every day overnight; an end before the start crosses midnight, and the part after
                     midnight belongs to the next day (for Sun 23:00-02:00: Monday 00:00-02:00)
  (empty)            any time: `parse_window` returns None

Day names are Mon..Sun or Monday..Sunday (any case), or Any. The end minute is exclusive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson

DAY_ABBREVIATIONS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_FULL_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MINUTES_PER_DAY = 24 * 60
_FORM = re.compile(r"([A-Za-z]+)\s+([0-9]{1,2}):([0-9]{2})\s*-\s*([0-9]{1,2}):([0-9]{2})")
EXAMPLE = '"Sun 02:00-04:00" or "Any 23:00-02:00"'


class WindowParseError(ValueError):
    """A maintenance window written wrong; the message shows a valid example."""


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    day: int | None  # ISO weekday 1 (Mon) .. 7 (Sun); None: every day
    start: int  # minute of the day, 0..1439
    end: int  # minute of the day, 0..1439, exclusive; end < start crosses midnight

    def __post_init__(self) -> None:
        if self.day is not None and not 1 <= self.day <= 7:
            raise WindowParseError(f"day {self.day} is not an ISO weekday (1 = Mon .. 7 = Sun)")
        for m in (self.start, self.end):
            if not 0 <= m < _MINUTES_PER_DAY:
                raise WindowParseError(f"minute {m} is not in a day (0..1439)")
        if self.start == self.end:
            raise WindowParseError(f"{self} starts and ends at the same time; example: {EXAMPLE}")

    def __str__(self) -> str:
        day = "Any" if self.day is None else DAY_ABBREVIATIONS[self.day - 1]
        return f"{day} {_hhmm(self.start)}-{_hhmm(self.end)}"

    @property
    def crosses_midnight(self) -> bool:
        return self.end < self.start

    def _opens_on(self, isoweekday: int) -> bool:
        return self.day is None or self.day == isoweekday

    def contains(self, local: datetime) -> bool:
        """Is the wall-clock time `local` inside the window? (Its tzinfo, if any, is not consulted.)"""
        minute = local.hour * 60 + local.minute
        day = local.isoweekday()
        if not self.crosses_midnight:
            return self._opens_on(day) and self.start <= minute < self.end
        if minute >= self.start:
            return self._opens_on(day)
        return minute < self.end and self._opens_on((day - 2) % 7 + 1)  # the previous day's opening

    def next_start(self, local: datetime) -> datetime:
        """The first opening at or after `local` (wall-clock arithmetic; keeps `local`'s tzinfo)."""
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        for offset in range(8):
            day = midnight + timedelta(days=offset)
            candidate = day + timedelta(minutes=self.start)
            if self._opens_on(day.isoweekday()) and candidate >= local:
                return candidate
        raise AssertionError("unreachable: a window opens at least once a week")


def _quote(text: str) -> str:
    return orjson.dumps(text).decode()


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _day(token: str) -> int | None:
    name = token.lower()
    if name == "any":
        return None
    for number, (abbr, full) in enumerate(zip(DAY_ABBREVIATIONS, _FULL_NAMES, strict=True), start=1):
        if name in (abbr.lower(), full):
            return number
    raise WindowParseError(f"{_quote(token)} is not a day: use Mon..Sun, Monday..Sunday or Any; example: {EXAMPLE}")


def _minute(hours: str, minutes: str, text: str) -> int:
    h, m = int(hours), int(minutes)
    if h > 23 or m > 59:
        raise WindowParseError(f"{_quote(text)}: {hours}:{minutes} is not a 24-hour time (00:00..23:59); "
                               f"example: {EXAMPLE}")
    return h * 60 + m


def parse_window(text: str) -> MaintenanceWindow | None:
    """`DOW HH:MM-HH:MM` → a window; empty (or blank) → None, meaning any time."""
    stripped = text.strip()
    if not stripped:
        return None
    match = _FORM.fullmatch(stripped)
    if match is None:
        raise WindowParseError(f"{_quote(text)} is not DOW HH:MM-HH:MM; example: {EXAMPLE}")
    day, h1, m1, h2, m2 = match.groups()
    start, end = _minute(h1, m1, text), _minute(h2, m2, text)
    if start == end:
        raise WindowParseError(f"{_quote(text)} starts and ends at the same time; for any time leave it empty; "
                               f"example: {EXAMPLE}")
    return MaintenanceWindow(_day(day), start, end)
