"""The query of a usage view (usage, report, baseline, events): the range in the organisation's timezone, the
group-by dimensions and the filters, checked: unknown parameters are 400s naming the valid ones, unknown ids 404s."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from tollhouse.directory import Directory
from tollhouse.gateway.admin import ApiError
from tollhouse.gateway.state import GatewayState
from tollhouse.gateway.storage import FLUSH_WAIT_S
from tollhouse.ledger.windows import window_bounds_ms
from tollhouse.policy.rules import Window
from tollhouse.policy.timewindow import zone

# public dimension name -> rollup column
DIMENSIONS = {"team": "team", "project": "project", "cost_centre": "cost_centre", "person": "subject",
              "provider": "provider", "model": "model"}
# filter parameter -> rollup column (`subject` is the events API's name for a person)
FILTERS = {**DIMENSIONS, "subject": "subject"}
# filters whose ids must exist -> what they name
_CHECKED = {"subject": "person", "person": "person", "team": "team", "project": "project"}


def bad(message: str) -> ApiError:
    return ApiError(400, message, "bad_parameter")


def check_names(query: Mapping[str, str], allowed: Collection[str]) -> None:
    """400 for a parameter this endpoint does not take, listing those it does."""
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise bad(f"unknown query parameter(s) {', '.join(unknown)}; this endpoint takes: "
                  f"{', '.join(sorted(allowed))}")


def choice(query: Mapping[str, str], name: str, allowed: Collection[str], default: str) -> str:
    value = query.get(name, default)
    if value not in allowed:
        raise bad(f"query parameter {name!r} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def group_by(query: Mapping[str, str], many: bool, default: str | None) -> list[str]:
    """The dimensions (public names) of `group_by`: one, or with `many` a comma-separated list."""
    raw = query.get("group_by", default)
    if raw is None or raw == "":
        return []
    names = [n.strip() for n in raw.split(",")] if many else [raw]
    for name in names:
        if name not in DIMENSIONS:
            raise bad(f"group_by {name!r} is not a dimension: use {'one or more (comma-separated) of ' if many else ''}"
                      f"{'|'.join(DIMENSIONS)}")
    if len(set(names)) != len(names):
        raise bad(f"group_by names a dimension twice: {raw!r}")
    return names


def _instant(raw: str, name: str, tz: ZoneInfo, end: bool) -> int:
    """A `from`/`to` value as Unix ms: a date is local midnight in `tz` (as `to`, the end of that day: the date is
    included); a datetime without an offset is in `tz`."""
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            local = datetime(day.year, day.month, day.day, tzinfo=tz) + (timedelta(days=1) if end else timedelta())
            return local_ms(local)
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise bad(f"query parameter {name!r} must be a date (2026-11-01) or an ISO 8601 time "
                  f"(2026-11-01T09:00:00Z); got {raw!r}") from None
    return int((when if when.tzinfo else when.replace(tzinfo=tz)).timestamp() * 1000)


def local_ms(local: datetime) -> int:
    """Unix ms of an aware local wall time (the wall time's offset resolved by its zone, DST included)."""
    return int(local.timestamp() * 1000)


@dataclass(frozen=True)
class Range:
    since_ms: int
    until_ms: int
    tz: ZoneInfo
    billing_day: int

    def iso(self, ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, self.tz).isoformat(timespec="seconds")


def org_zone(state: GatewayState) -> tuple[ZoneInfo, int]:
    ledger = state.settings.ledger
    return zone(ledger.timezone), ledger.billing_day


def time_range(query: Mapping[str, str], state: GatewayState, max_days: int) -> Range:
    """`from` (inclusive) and `to` (exclusive; a date: through that day), each defaulting to the current billing
    month's bounds (ledger.billing_day in ledger.timezone)."""
    tz, billing_day = org_zone(state)
    start, end = window_bounds_ms(Window(monthly=True), int(state.clock() * 1000), billing_day, tz)
    since = _instant(query["from"], "from", tz, end=False) if "from" in query else start
    until = _instant(query["to"], "to", tz, end=True) if "to" in query else end
    if until <= since:
        raise bad(f"'to' ({Range(until, until, tz, billing_day).iso(until)}) must be after 'from' "
                  f"({Range(since, since, tz, billing_day).iso(since)})")
    if until - since > max_days * 86_400_000:
        raise bad(f"the range from 'from' to 'to' is longer than {max_days} days, the most this view answers; "
                  "ask for a shorter range (or a coarser interval)")
    return Range(since, until, tz, billing_day)


@dataclass
class Filters:
    """rollup column -> the values kept (a team: itself and the teams below it)."""

    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)


async def filters(query: Mapping[str, str], state: GatewayState, directory: Directory) -> Filters:
    """The filters given (comma-separated values each); 404 for a team, project or person neither the directory
    nor the stored history knows."""
    out = Filters()
    for name, column in FILTERS.items():
        raw = query.get(name)
        if raw is None:
            continue
        values = tuple(v.strip() for v in raw.split(",") if v.strip())
        if not values:
            raise bad(f"query parameter {name!r} is empty: give one or more values, comma-separated")
        kept: list[str] = list(out.columns.get(column, ()))
        for value in values:
            kept.extend(await known_ids(state, directory, name, value))
        out.columns[column] = tuple(dict.fromkeys(kept))
    return out


async def known_ids(state: GatewayState, directory: Directory, name: str, value: str) -> tuple[str, ...]:
    """The ids a filter value stands for (a team: it and its descendants); 404 when it names no one known."""
    what = _CHECKED.get(name)
    if what is None:
        return (value,)
    if what == "team" and (found := directory.descendants(value)):
        return found
    if (what == "project" and directory.has_project(value)) or (what == "person" and directory.knows(value)):
        return (value,)
    column = FILTERS[name]
    await state.writer.flush(FLUSH_WAIT_S)  # a call just recorded counts as history
    if await state.runner.run(lambda s: s.usage_seen(column, value)):
        return (value,)  # gone from the directory, still in the history
    raise ApiError(404, f"no {what} {value!r}: the directory (version {directory.version}) does not name it and no "
                   "recorded call has it", "not_found")
