"""Wrong admin tokens, counted per client address: after `console.failed_sign_ins` of them within
`console.lockout_minutes`, that address may not try the admin token again (not even the right one) until the
oldest failure is that old. The admin token opens everything, and an organisation may have chosen a guessable one.

Every way the admin token is checked counts: the console's sign-in form, the bearer token on `/api/v1` and on
console pages, the agent routes. Each failure is audited (`console.sign_in_failed`, at most `failed_sign_ins` per
address per window, so an attacker cannot flood the trail) and so is each lockout (`console.sign_in_locked`).
Held in memory per process (at most `MAX_ADDRESSES` addresses, the least recently failing forgotten first): with
several gateways an address gets its tries on each.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

MAX_ADDRESSES = 10_000
UNKNOWN = "unknown"  # a request whose peer is gone


class SignInGuard:
    def __init__(self, attempts: int, window_s: float, clock: Callable[[], float],
                 audit: Callable[[str, str, dict[str, Any]], None]) -> None:
        self._attempts = attempts
        self._window = window_s
        self._clock = clock
        self._audit = audit
        self._failures: OrderedDict[str, list[float]] = OrderedDict()  # address → failure times, oldest first

    def locked(self, address: str | None) -> int | None:
        """Seconds (rounded up) until `address` may try the admin token again; None if it may now."""
        times = self._failures.get(address or UNKNOWN)
        if times is None or len(times) < self._attempts:
            return None
        left = times[0] + self._window - self._clock()
        return math.ceil(left) if left > 0 else None

    def failed(self, address: str | None, via: str) -> None:
        """A wrong admin token from `address` (`via`: what it was tried on)."""
        key = address or UNKNOWN
        now = self._clock()
        times = [t for t in self._failures.pop(key, []) if t > now - self._window]
        times.append(now)
        self._failures[key] = times[-self._attempts:]
        while len(self._failures) > MAX_ADDRESSES:
            self._failures.popitem(last=False)
        if len(times) <= self._attempts:
            self._audit("console.sign_in_failed", key, {"via": via, "failures": len(times),
                                                        "window_s": self._window})
        if len(times) == self._attempts:
            self._audit("console.sign_in_locked", key, {"failures": len(times), "for_s": self._window})
