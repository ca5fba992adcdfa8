"""Numbers and flags in request bodies, read as leniently as the providers' servers read them.

Servers built on lax validators accept `20000`, `20000.0` and `"20000"` alike (and form fields are always
strings), so the gateway must read all of them: a form it could not read would leave the call's worst case
unjudged. Anything it cannot read as a sane count gives None, which callers treat as "the most the provider
allows", never as "little".
"""

from __future__ import annotations

import math
import re

# Above this no token or choice count is real: such a value is treated as unreadable (the model's maximum).
MAX_COUNT = 2**31 - 1
# The most completions one call can ask for (OpenAI's `n` allows 128; Gemini's candidateCount 8).
MAX_CHOICES = 128

_INTEGRAL = re.compile(r"\+?(\d+)(?:\.0*)?")
_TRUE = frozenset({"true", "1"})


def _integral(value: object) -> int | None:
    """A whole number from an int, an integral float or a numeric string; None if it is none of these."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        found = _INTEGRAL.fullmatch(value.strip())
        if found is None or len(found.group(1)) > 12:
            return None
        return int(found.group(1))
    return None


def count(value: object) -> int | None:
    """A positive count from an int, an integral float or a numeric string; None for anything else
    (missing, null, booleans, negative, zero, fractional, NaN, infinite, huge, not a number)."""
    n = _integral(value)
    return n if n is not None and 1 <= n <= MAX_COUNT else None


def first_count(body: dict[str, object], *keys: str) -> int | None:
    """The largest count among the keys present; None if none is present or any present one is unreadable
    (a server may honour whichever it prefers, so the worst case is the largest)."""
    found: int | None = None
    for key in keys:
        raw = body.get(key)
        if raw is None:
            continue
        n = raw if type(raw) is int and 1 <= raw <= MAX_COUNT else count(raw)  # the usual case first
        if n is None:
            return None
        found = n if found is None else max(found, n)
    return found


def choices(body: dict[str, object], *keys: str) -> int:
    """Completions per call: the largest of the keys present (OpenAI `n` and `best_of`, Gemini
    candidateCount); 1 when none is present (or 0, proto3's "unset"); MAX_CHOICES when one is unreadable."""
    most = 1
    for key in keys:
        raw = body.get(key)
        if raw is None or (raw == 1 and type(raw) is int):
            continue
        n = _integral(raw)
        if n == 0:
            continue
        most = max(most, MAX_CHOICES if n is None or n < 0 else min(n, MAX_CHOICES))
    return most


def flag(value: object) -> bool:
    """A boolean a lax server would take as true: true, 1, "true", "1" (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value == 1
    return isinstance(value, str) and value.strip().lower() in _TRUE
