"""The agent maintenance window: parsing, midnight crossing, next opening; checked against a brute-force week."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollhouse.control.window import MaintenanceWindow, WindowParseError, parse_window

MONDAY = datetime(2024, 1, 1)  # a Monday
WEEK = 7 * 24 * 60


def at(day: str, hhmm: str) -> datetime:
    offset = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"].index(day)
    h, m = hhmm.split(":")
    return MONDAY + timedelta(days=offset, hours=int(h), minutes=int(m))


@pytest.mark.parametrize(("text", "expected"), [
    ("Sun 02:00-04:00", MaintenanceWindow(7, 120, 240)),
    ("Any 23:00-02:00", MaintenanceWindow(None, 23 * 60, 120)),
    ("sun 2:00-4:00", MaintenanceWindow(7, 120, 240)),
    ("SUNDAY 02:00 - 04:00", MaintenanceWindow(7, 120, 240)),
    ("  wednesday 09:30-10:15  ", MaintenanceWindow(3, 570, 615)),
    ("any 00:00-23:59", MaintenanceWindow(None, 0, 1439)),
    ("Fri 22:00-00:00", MaintenanceWindow(5, 22 * 60, 0)),
    ("", None),
    ("   ", None),
])
def test_parse(text: str, expected: MaintenanceWindow | None) -> None:
    assert parse_window(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("Sun 2am-4am", '"Sun 2am-4am" is not DOW HH:MM-HH:MM; example: "Sun 02:00-04:00" or "Any 23:00-02:00"'),
    ("Sun 02:00-02:00", "starts and ends at the same time"),
    ("Sun 24:00-01:00", "24:00 is not a 24-hour time"),
    ("Sun 01:60-02:00", "01:60 is not a 24-hour time"),
    ("Sonntag 01:00-02:00", '"Sonntag" is not a day: use Mon..Sun, Monday..Sunday or Any'),
    ("Su 01:00-02:00", '"Su" is not a day'),
    ("Sun 01:00", "is not DOW HH:MM-HH:MM"),
    ("01:00-02:00", "is not DOW HH:MM-HH:MM"),
    ("Mon,Tue 01:00-02:00", "is not DOW HH:MM-HH:MM"),
    ("Sun 001:00-02:00", "is not DOW HH:MM-HH:MM"),
    ("Sun ٠١:00-02:00", "is not DOW HH:MM-HH:MM"),  # non-ASCII digits
])
def test_parse_errors_say_what_and_show_an_example(text: str, message: str) -> None:
    with pytest.raises(WindowParseError) as exc:
        parse_window(text)
    assert message in str(exc.value)
    assert "example:" in str(exc.value)


@pytest.mark.parametrize(("window", "when", "inside"), [
    ("Sun 02:00-04:00", at("Sun", "02:00"), True),
    ("Sun 02:00-04:00", at("Sun", "03:59"), True),
    ("Sun 02:00-04:00", at("Sun", "04:00"), False),
    ("Sun 02:00-04:00", at("Sun", "01:59"), False),
    ("Sun 02:00-04:00", at("Sat", "03:00"), False),
    ("Sun 23:00-02:00", at("Sun", "23:30"), True),
    ("Sun 23:00-02:00", at("Mon", "01:59"), True),  # after midnight: Monday's part of Sunday's window
    ("Sun 23:00-02:00", at("Mon", "02:00"), False),
    ("Sun 23:00-02:00", at("Sun", "01:00"), False),  # Saturday night's window, not Sunday's
    ("Sun 23:00-02:00", at("Mon", "23:30"), False),
    ("Any 23:00-02:00", at("Wed", "23:00"), True),
    ("Any 23:00-02:00", at("Wed", "00:30"), True),
    ("Any 23:00-02:00", at("Wed", "12:00"), False),
    ("Fri 22:00-00:00", at("Fri", "23:59"), True),
    ("Fri 22:00-00:00", at("Sat", "00:00"), False),
])
def test_contains(window: str, when: datetime, inside: bool) -> None:
    w = parse_window(window)
    assert w is not None
    assert w.contains(when) is inside
    assert w.contains(when + timedelta(seconds=59)) is inside  # whole minutes


@pytest.mark.parametrize(("window", "when", "expected"), [
    ("Sun 02:00-04:00", at("Sun", "02:00"), at("Sun", "02:00")),  # at the start: now
    ("Sun 02:00-04:00", at("Sun", "02:01"), at("Sun", "02:00") + timedelta(days=7)),
    ("Sun 02:00-04:00", at("Mon", "09:00"), at("Sun", "02:00")),
    ("Any 23:00-02:00", at("Wed", "01:00"), at("Wed", "23:00")),
    ("Any 23:00-02:00", at("Wed", "23:30"), at("Thu", "23:00")),
    ("Sun 23:00-02:00", at("Mon", "01:00"), at("Sun", "23:00")),
])
def test_next_start(window: str, when: datetime, expected: datetime) -> None:
    w = parse_window(window)
    assert w is not None
    assert w.next_start(when) == expected


def test_next_start_keeps_the_timezone() -> None:
    tz = ZoneInfo("Europe/Berlin")
    w = parse_window("Any 02:00-03:00")
    assert w is not None
    assert w.next_start(datetime(2024, 6, 1, 12, 0, tzinfo=tz)) == datetime(2024, 6, 2, 2, 0, tzinfo=tz)


# -- properties --------------------------------------------------------------------------------------

@st.composite
def valid_windows(draw: st.DrawFn) -> MaintenanceWindow:
    start = draw(st.integers(0, 1439))
    end = draw(st.integers(0, 1439).filter(lambda e: e != start))
    return MaintenanceWindow(draw(st.one_of(st.none(), st.integers(1, 7))), start, end)


def _open_minutes(w: MaintenanceWindow) -> set[int]:
    """Reference: every minute of the week (from Monday 00:00) the window is open, by counting forward."""
    days = range(1, 8) if w.day is None else [w.day]
    length = (w.end - w.start) % (24 * 60)
    return {((d - 1) * 1440 + w.start + k) % WEEK for d in days for k in range(length)}


@given(valid_windows())
def test_format_round_trips(w: MaintenanceWindow) -> None:
    assert parse_window(str(w)) == w
    assert parse_window(str(w).lower()) == w


@settings(max_examples=40, deadline=None)
@given(valid_windows())
def test_contains_agrees_with_a_brute_force_week(w: MaintenanceWindow) -> None:
    expected = _open_minutes(w)
    for minute in range(WEEK):
        assert w.contains(MONDAY + timedelta(minutes=minute)) is (minute in expected), minute


@given(valid_windows(), st.integers(0, WEEK - 1), st.integers(0, 59))
def test_next_start_is_the_first_opening_at_or_after(w: MaintenanceWindow, minute: int, second: int) -> None:
    starts = range(1, 8) if w.day is None else [w.day]
    when = MONDAY + timedelta(minutes=minute, seconds=second)
    deltas = []
    for d in starts:
        delta = ((d - 1) * 1440 + w.start - minute) % WEEK
        deltas.append(WEEK if delta == 0 and second else delta)
    assert w.next_start(when) == MONDAY + timedelta(minutes=minute + min(deltas))
    assert w.contains(w.next_start(when))


@given(st.text())
def test_garbage_raises_only_the_typed_error(text: str) -> None:
    try:
        w = parse_window(text)
    except WindowParseError:
        return
    assert w is None or parse_window(str(w)) == w


@given(st.from_regex(r"[A-Za-z]{0,10} ?[0-9]{0,3}:?[0-9]{0,3}-?[0-9]{0,3}:?[0-9]{0,3}", fullmatch=True))
def test_near_misses_raise_only_the_typed_error(text: str) -> None:
    try:
        w = parse_window(text)
    except WindowParseError as exc:
        assert "example:" in str(exc)
        return
    assert w is None or parse_window(str(w)) == w
