"""Field types shared by the rule schema: each validates one value and says, in our words, what is wrong.

Every field of the rule schema is checked by one of these (pydantic `PlainValidator`s), so pydantic's
own error texts never reach a user: a failure is a `FieldProblem`, which `rule_errors` turns into
`rule <id>: <field>: <what>`.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Annotated, TypeVar

import regex
from pydantic import PlainValidator

from tollhouse.policy.compiled import Window, parse_count_window
from tollhouse.policy.timewindow import WindowError, parse_days, parse_hours, zone

T = TypeVar("T")


class FieldProblem(ValueError):
    """What is wrong with a value; `at` continues the path below the field being validated (a key such
    as "type" under "action", or a list index)."""

    def __init__(self, what: str, at: tuple[str | int, ...] = ()) -> None:
        super().__init__(what)
        self.what = what
        self.at = at


def shown(value: object, most: int = 40) -> str:
    """A value as it appears in a message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= most else text[:most - 3] + "..."


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise FieldProblem("must be a string")
    return value


def _optional_text(value: object) -> str | None:
    return None if value is None else _text(value)


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise FieldProblem("must be true or false")
    return value


def _zone_name(value: object) -> str:
    if not isinstance(value, str):
        raise FieldProblem("must be an IANA timezone name such as 'Europe/London' or 'UTC'")
    try:
        zone(value)
    except WindowError as exc:
        raise FieldProblem(str(exc)) from None
    return value


def strings(value: object, noun: str) -> frozenset[str]:
    """One name, or a non-empty list of non-empty names."""
    if isinstance(value, str) and value:
        return frozenset({value})
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise FieldProblem(f"{noun} must be a non-empty list of strings")
    return frozenset(value)


def _names_of(noun: str) -> Callable[[object], frozenset[str]]:
    return lambda value: strings(value, noun)


def _threshold(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise FieldProblem("threshold must be a number, e.g. 500")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise FieldProblem(f"threshold must be a number, got {shown(value)}") from None
    if not d.is_finite() or d < 0:
        raise FieldProblem(f"threshold must be a non-negative number, got {shown(value)}")
    return d


def _count_window(value: object) -> Window | None:
    if value is None:
        return None
    try:
        return parse_count_window(value, Window(monthly=True))
    except ValueError as exc:
        raise FieldProblem(str(exc)) from None


def _window_part(parse: Callable[[object], T], prefix: str) -> Callable[[object], T]:
    def check(value: object) -> T:
        try:
            return parse(value)
        except WindowError as exc:
            text = str(exc)
            raise FieldProblem(text.removeprefix(prefix)) from None
    return check


def _notify(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) and value:
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise FieldProblem('must be a list of alert channel names or email addresses, e.g. ["ops-slack"]')
    return tuple(value)


def _pattern_list(value: object) -> tuple[regex.Pattern[str], ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise FieldProblem('must be a list of regular expressions, e.g. ["(?i)project\\\\s+falcon"]')
    out: list[regex.Pattern[str]] = []
    for i, pat in enumerate(items):
        if not isinstance(pat, str):
            raise FieldProblem("must be a regular expression string", at=(i,))
        try:  # `regex`: matching takes a timeout and releases the GIL (policy/dlp.py)
            out.append(regex.compile(pat))
        except (regex.error, OverflowError, RecursionError, ValueError) as exc:
            raise FieldProblem(f"not a valid regular expression: {exc}", at=(i,)) from None
    return tuple(out)


Text = Annotated[str, PlainValidator(_text)]
OptionalText = Annotated[str | None, PlainValidator(_optional_text)]
Flag = Annotated[bool, PlainValidator(_flag)]
ZoneName = Annotated[str, PlainValidator(_zone_name)]
Models = Annotated[frozenset[str], PlainValidator(_names_of("models"))]
Providers = Annotated[frozenset[str], PlainValidator(_names_of("providers"))]
Allowlist = Annotated[frozenset[str], PlainValidator(_names_of("allowlist"))]
Denylist = Annotated[frozenset[str], PlainValidator(_names_of("denylist"))]
Threshold = Annotated[Decimal, PlainValidator(_threshold)]
CountWindow = Annotated[Window | None, PlainValidator(_count_window)]
Days = Annotated[frozenset[int], PlainValidator(_window_part(parse_days, "days: "))]
Hours = Annotated[tuple[tuple[int, int], ...], PlainValidator(_window_part(parse_hours, "hours: "))]
Notify = Annotated[tuple[str, ...], PlainValidator(_notify)]
Patterns = Annotated[tuple[regex.Pattern[str], ...], PlainValidator(_pattern_list)]


def one_of(choices: dict[str, T], what: str) -> Callable[[object], T]:
    """A case-insensitive choice; `what` ends the message ("is not a scope; use ...")."""
    def check(value: object) -> T:
        if isinstance(value, str) and value.lower() in choices:
            return choices[value.lower()]
        raise FieldProblem(f"{shown(value)} {what}")
    return check
