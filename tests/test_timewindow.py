"""Time windows: weekday and hour ranges in an IANA zone, judged on the local wall clock (so DST is handled)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tollhouse.policy.timewindow import TimeWindow, WindowError, parse_window

LONDON = ZoneInfo("Europe/London")


def at(text: str, tz: ZoneInfo | None = None) -> datetime:
    """A wall-clock time 'YYYY-MM-DD HH:MM' in `tz` (UTC when not given)."""
    return datetime.fromisoformat(text).replace(tzinfo=tz or UTC)


# 2024-06-03 is a Monday; 2024-06-07 Friday, 06-08 Saturday, 06-09 Sunday, 06-10 Monday.
MON, TUE, FRI, SAT, SUN, NEXT_MON = "2024-06-03", "2024-06-04", "2024-06-07", "2024-06-08", "2024-06-09", "2024-06-10"


@pytest.mark.parametrize("days, expected", [
    ([1, 2, 3, 4, 5], {1, 2, 3, 4, 5}),
    ("mon-fri", {1, 2, 3, 4, 5}),
    ("Mon - Fri", {1, 2, 3, 4, 5}),
    ("sat,sun", {6, 7}),
    ("saturday, sunday", {6, 7}),
    ("fri-mon", {5, 6, 7, 1}),  # a range may wrap past Sunday
    ("1-3,5", {1, 2, 3, 5}),
    ("0", {7}),  # cron's Sunday
    ([0, 6], {6, 7}),
    (["mon", "wed-thu"], {1, 3, 4}),
    (None, {1, 2, 3, 4, 5, 6, 7}),
])
def test_days(days: object, expected: set[int]) -> None:
    raw: dict[str, Any] = {} if days is None else {"days": days}
    assert parse_window(raw, "UTC").days == expected


@pytest.mark.parametrize("hours, expected", [
    ([8, 18], ((480, 1080),)),
    ("9-17", ((540, 1020),)),
    ("09:00-17:30", ((540, 1050),)),
    ("22:00-06:30", ((1320, 390),)),
    ("0-24", ((0, 1440),)),
    ("9-12, 13-17", ((540, 720), (780, 1020))),
    (["9-12", "13:30-17"], ((540, 720), (810, 1020))),
    ([22, 6], ((1320, 360),)),
    (None, ((0, 1440),)),
])
def test_hours(hours: object, expected: tuple[tuple[int, int], ...]) -> None:
    raw: dict[str, Any] = {} if hours is None else {"hours": hours}
    assert parse_window(raw, "UTC").minutes == expected


@pytest.mark.parametrize("when, inside", [
    (f"{MON} 08:59", False),
    (f"{MON} 09:00", True),
    (f"{MON} 16:59", True),
    (f"{MON} 17:00", False),  # the end is exclusive
    (f"{FRI} 12:00", True),
    (f"{SAT} 12:00", False),
    (f"{SUN} 12:00", False),
])
def test_weekday_business_hours(when: str, inside: bool) -> None:
    window = parse_window({"days": "mon-fri", "hours": "9-17"}, "UTC")
    assert window.contains(at(when)) is inside


@pytest.mark.parametrize("when, inside", [
    (f"{SAT} 00:00", True),
    (f"{SUN} 23:59", True),
    (f"{FRI} 23:59", False),
    (f"{NEXT_MON} 00:00", False),
])
def test_weekend_all_day(when: str, inside: bool) -> None:
    assert parse_window({"days": "sat,sun"}, "UTC").contains(at(when)) is inside


@pytest.mark.parametrize("when, inside", [
    (f"{FRI} 21:59", False),
    (f"{FRI} 22:00", True),
    (f"{FRI} 23:59", True),
    (f"{SAT} 00:00", True),  # the early morning belongs to Friday's window
    (f"{SAT} 06:29", True),
    (f"{SAT} 06:30", False),
    (f"{SAT} 22:30", False),  # Saturday is not a window day
    (f"{FRI} 03:00", False),  # Friday's early morning would be Thursday's window
    (f"{SUN} 03:00", False),
])
def test_overnight_window_across_midnight(when: str, inside: bool) -> None:
    window = parse_window({"days": "fri", "hours": "22:00-06:30"}, "UTC")
    assert window.contains(at(when)) is inside


def test_overnight_window_wraps_the_week() -> None:
    window = parse_window({"days": "sun", "hours": "22-2"}, "UTC")
    assert window.contains(at(f"{NEXT_MON} 01:00"))  # Sunday night runs into Monday
    assert not window.contains(at(f"{MON} 23:00"))
    assert not window.contains(at(f"{SUN} 01:00"))  # that is Saturday's night


def test_zone_is_applied() -> None:
    window = parse_window({"days": "mon-fri", "hours": "9-17"}, "America/New_York")
    assert window.tz.key == "America/New_York"
    assert not window.contains(at(f"{MON} 10:00"))  # 06:00 in New York (EDT, UTC-4)
    assert window.contains(at(f"{MON} 13:00"))  # 09:00 in New York
    assert window.contains(at(f"{FRI} 20:59"))
    assert not window.contains(at(f"{FRI} 21:00"))
    # A Saturday-morning UTC instant that is still Friday afternoon in New York... is not (EDT is only -4).
    assert not window.contains(at(f"{SAT} 00:30"))
    # The window's own timezone beats the rule's default.
    own = parse_window({"hours": "9-17", "timezone": "Asia/Kolkata"}, "America/New_York")
    assert own.tz.key == "Asia/Kolkata"
    assert own.contains(at(f"{MON} 03:30"))  # 09:00 IST (UTC+5:30)
    assert not own.contains(at(f"{MON} 03:29"))


def test_local_day_differs_from_utc_day() -> None:
    # Monday 08:00 in Tokyo is Sunday 23:00 UTC.
    window = parse_window({"days": "mon", "hours": "8-9"}, "Asia/Tokyo")
    assert window.contains(at(f"{SUN} 23:00"))
    assert not window.contains(at(f"{MON} 23:00"))


def test_contains_accepts_any_aware_datetime() -> None:
    window = parse_window({"days": "mon-fri", "hours": "9-17"}, "Europe/London")
    instant = at(f"{MON} 10:00", ZoneInfo("Europe/London"))
    assert window.contains(instant) == window.contains(instant.astimezone(ZoneInfo("Pacific/Auckland")))


# --- DST: Europe/London 09:00-17:00, evaluated at UTC instants ---------------------------------------------------
# 2024: BST starts Sun 31 March 01:00 UTC, ends Sun 27 October 01:00 UTC.

@pytest.mark.parametrize("utc, inside", [
    # Saturday before the March change: GMT, local = UTC
    ("2024-03-30 08:59", False), ("2024-03-30 09:00", True), ("2024-03-30 16:59", True), ("2024-03-30 17:00", False),
    # the change day itself, after 01:00 UTC: BST, local = UTC + 1
    ("2024-03-31 07:59", False), ("2024-03-31 08:00", True), ("2024-03-31 15:59", True), ("2024-03-31 16:00", False),
    # Monday after: BST
    ("2024-04-01 08:00", True), ("2024-04-01 07:30", False), ("2024-04-01 16:00", False), ("2024-04-01 15:30", True),
    # Friday before the October change: BST
    ("2024-10-25 08:00", True), ("2024-10-25 07:59", False), ("2024-10-25 16:00", False), ("2024-10-25 15:59", True),
    # the change day itself: GMT again from 01:00 UTC
    ("2024-10-27 08:30", False), ("2024-10-27 09:00", True), ("2024-10-27 16:30", True), ("2024-10-27 17:00", False),
    # Monday after: GMT
    ("2024-10-28 08:00", False), ("2024-10-28 16:30", True),
])
def test_dst_in_london(utc: str, inside: bool) -> None:
    window = parse_window({"hours": "09:00-17:00"}, "Europe/London")
    assert window.contains(at(utc)) is inside


def test_dst_overnight_window_in_the_repeated_hour() -> None:
    # 00:30-01:30 local on the October change night: 01:00-01:59 happens twice (BST, then GMT).
    window = parse_window({"days": "sun", "hours": "00:30-01:30"}, "Europe/London")
    assert window.contains(at("2024-10-26 23:45"))  # 00:45 BST
    assert window.contains(at("2024-10-27 00:15"))  # 01:15 BST
    assert window.contains(at("2024-10-27 01:15"))  # 01:15 GMT, the repeat
    assert not window.contains(at("2024-10-27 01:30"))  # 01:30 GMT
    # March: 01:00-02:00 local does not exist; 00:59 GMT is followed by 02:00 BST.
    spring = parse_window({"days": "sun", "hours": "1-2"}, "Europe/London")
    assert not spring.contains(at("2024-03-31 00:59"))
    assert not spring.contains(at("2024-03-31 01:00"))  # 02:00 BST


# --- errors ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, tz, word", [
    ("mon-fri", "UTC", "window"),
    ({"days": "funday"}, "UTC", "funday"),
    ({"days": [8]}, "UTC", "8"),
    ({"days": [True]}, "UTC", "True"),
    ({"days": ""}, "UTC", "days"),
    ({"days": "mon-"}, "UTC", "days"),
    ({"hours": "7x"}, "UTC", "hours"),
    ({"hours": "9"}, "UTC", "hours"),
    ({"hours": "9-9"}, "UTC", "same"),
    ({"hours": "25-3"}, "UTC", "25"),
    ({"hours": "9:5-10"}, "UTC", "9:5"),
    ({"hours": "24:30-1"}, "UTC", "24:30"),
    ({"hours": [9, 17, 20]}, "UTC", "hours"),
    ({"hours": [-1, 5]}, "UTC", "-1"),
    ({"hours": "9-17", "tz": "UTC"}, "UTC", "tz"),
    ({"hours": "9-17"}, "Mars/Olympus_Mons", "Mars/Olympus_Mons"),
    ({"hours": "9-17", "timezone": "../etc/passwd"}, "UTC", "timezone"),
    ({"hours": "9-17", "timezone": ""}, "UTC", "timezone"),
])
def test_invalid_windows(raw: object, tz: str, word: str) -> None:
    with pytest.raises(WindowError) as info:
        parse_window(raw, tz)
    assert word in str(info.value)


# --- properties --------------------------------------------------------------------------------------------------

ZONES = [ZoneInfo(z) for z in ("UTC", "Europe/London", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe",
                               "Pacific/Chatham", "America/St_Johns", "Asia/Kathmandu", "Pacific/Apia")]
NAMES = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
FULL = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
WEEK = 7 * 1440


def day_token(d: int, style: int) -> str:
    if style == 0:
        return str(d)
    if style == 1:
        return "0" if d == 7 else str(d)
    if style == 2:
        return NAMES[d - 1]
    if style == 3:
        return FULL[d - 1].capitalize()
    return NAMES[d - 1].upper()


def clock(minute: int, style: int) -> str:
    h, m = divmod(minute, 60)
    if m == 0 and style == 0:
        return str(h)
    return f"{h:02d}:{m:02d}" if style == 1 else f"{h}:{m:02d}"


@st.composite
def windows(draw: st.DrawFn) -> tuple[dict[str, Any], str, set[int], list[tuple[int, int]], ZoneInfo]:
    """A window written in one of the accepted forms, the rule's default zone, and the days, minute ranges and zone
    it means."""
    raw: dict[str, Any] = {}
    days: set[int] = set(range(1, 8))
    if draw(st.booleans()):
        runs = draw(st.lists(st.tuples(st.integers(1, 7), st.integers(1, 7)), min_size=1, max_size=3))
        days = set()
        for lo, hi in runs:
            days |= {(lo - 1 + k) % 7 + 1 for k in range((hi - lo) % 7 + 1)}
        form = draw(st.integers(0, 2))
        if form == 0:
            expanded = sorted({(lo - 1 + k) % 7 + 1 for lo, hi in runs for k in range((hi - lo) % 7 + 1)})
            raw["days"] = [0 if d == 7 and draw(st.booleans()) else d for d in expanded]
        else:
            style = draw(st.integers(0, 4))
            parts = [day_token(lo, style) if lo == hi else f"{day_token(lo, style)}-{day_token(hi, style)}"
                     for lo, hi in runs]
            raw["days"] = ", ".join(parts) if form == 1 else parts
    ranges: list[tuple[int, int]] = [(0, 1440)]
    if draw(st.booleans()):
        n = draw(st.integers(1, 3))
        ranges = []
        for _ in range(n):
            whole = draw(st.booleans())
            step = 60 if whole else 1
            start = draw(st.integers(0, 1440 // step)) * step
            end = draw(st.integers(0, 1440 // step).filter(lambda e, s=start, k=step: e * k != s)) * step
            ranges.append((start, end))
        if n == 1 and all(m % 60 == 0 for m in ranges[0]) and draw(st.booleans()):
            raw["hours"] = [ranges[0][0] // 60, ranges[0][1] // 60]
        else:
            style = draw(st.integers(0, 2))
            texts = [f"{clock(s, style)}-{clock(e, style)}" for s, e in ranges]
            raw["hours"] = ", ".join(texts) if draw(st.booleans()) else texts
    tz = draw(st.sampled_from(ZONES))
    if draw(st.booleans()):
        raw["timezone"] = tz.key
        default = "UTC"
    else:
        default = tz.key
    return raw, default, days, ranges, tz


def reference(days: set[int], ranges: list[tuple[int, int]], tz: ZoneInfo, now: datetime) -> bool:
    """Brute force on the local wall clock: each (day, range) covers an interval of the week; an overnight range
    runs from its start on that day into the next morning."""
    local = datetime.fromtimestamp(now.timestamp(), tz)
    week_minute = (local.isoweekday() - 1) * 1440 + local.hour * 60 + local.minute
    for d in days:
        for start, end in ranges:
            begin = (d - 1) * 1440 + start
            length = end - start if start < end else 1440 - start + end
            if (week_minute - begin) % WEEK < length:
                return True
    return False


aware = st.datetimes(min_value=datetime(1995, 1, 1), max_value=datetime(2045, 12, 31),
                     timezones=st.sampled_from([UTC, *ZONES]))


@settings(max_examples=300, deadline=None)
@given(windows(), aware)
def test_contains_agrees_with_wall_clock_reference(
        spec: tuple[dict[str, Any], str, set[int], list[tuple[int, int]], ZoneInfo], now: datetime) -> None:
    raw, default, days, ranges, tz = spec
    window = parse_window(raw, default)
    assert isinstance(window, TimeWindow)
    assert window.days == days and window.tz.key == tz.key
    assert window.contains(now) is reference(days, ranges, tz, now)


@settings(max_examples=150, deadline=None)
@given(windows(), st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2024, 12, 31)),
       st.sampled_from(ZONES))
def test_contains_depends_only_on_the_instant(
        spec: tuple[dict[str, Any], str, set[int], list[tuple[int, int]], ZoneInfo], naive: datetime,
        zone: ZoneInfo) -> None:
    raw, default, _, _, _ = spec
    window = parse_window(raw, default)
    instant = naive.replace(tzinfo=UTC)
    assert window.contains(instant) is window.contains(instant.astimezone(zone))


junk_text = st.text(alphabet=st.sampled_from(list("0123456789-:, MonTuesdayFrSt²³١٣½x\t")), max_size=10)
json_junk = st.recursive(st.none() | st.booleans() | st.integers(-50, 10**6) | st.floats() | st.text(max_size=6)
                         | junk_text, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(st.sampled_from(["days", "hours", "timezone", "x"]) | st.text(max_size=4),
                                           inner, max_size=3), max_leaves=10)
junk_windows = st.fixed_dictionaries({}, optional={"days": junk_text | json_junk, "hours": junk_text | json_junk,
                                                   "timezone": st.text(max_size=12) | st.sampled_from(
                                                       ["UTC", "Europe", "Europe/", "/etc/passwd", "..", "zone.tab",
                                                        "Europe/London", "posixrules"])})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(junk_windows | json_junk, st.sampled_from(["UTC", "Europe/London", "", "Nowhere/Else", "Europe"]))
@example({"days": "²"}, "UTC")
@example({"hours": "²-3"}, "UTC")
@example({"days": "9" * 5000}, "UTC")
def test_parser_raises_only_window_error(raw: object, tz: str) -> None:
    try:
        window = parse_window(raw, tz)
    except WindowError as exc:
        assert str(exc)
    else:
        assert isinstance(window, TimeWindow)
        window.contains(datetime(2024, 6, 3, 12, tzinfo=UTC))


# Deterministic regressions for what the property above found: str.isdigit() accepts characters int() rejects.

@pytest.mark.parametrize("raw", [{"days": "²"}, {"days": ["³"]}, {"days": "mon-²"}, {"hours": "²-3"},
                                 {"hours": "9-17:²²"}, {"days": "9" * 5000}])
def test_digit_strings_int_rejects_are_window_errors(raw: dict[str, Any]) -> None:
    with pytest.raises(WindowError):
        parse_window(raw, "UTC")
