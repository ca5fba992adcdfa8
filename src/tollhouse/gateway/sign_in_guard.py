"""Wrong admin tokens, counted per client address: after `console.failed_sign_ins` of them within
`console.lockout_minutes`, that address may not try the admin token again (not even the right one) until the
oldest failure is that old. The admin token opens everything, and an organisation may have chosen a guessable one.

Every way the admin token is checked counts: the console's sign-in form, the bearer token on `/api/v1` and on
console pages, the agent routes. Each failure is audited (`console.sign_in_failed`, at most `failed_sign_ins` per
address per window, so an attacker cannot flood the trail) and so is each lockout (`console.sign_in_locked`).
Held in memory per process (at most `MAX_ADDRESSES` addresses, the least recently failing forgotten first), and
shared through the audit trail: every second each gateway reads the addresses whose audited failures, on every
gateway sharing the store, reach the limit within the window (`shared_failures`, gateway/app.py `_follow_store`)
and locks them out too. So tries spread over several gateways count together, within about a second.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from tollhouse.events.store import Store

MAX_ADDRESSES = 10_000
UNKNOWN = "unknown"  # a request whose peer is gone
FAILED = "console.sign_in_failed"
LOCKED = "console.sign_in_locked"


def shared_failures(store: Store, since_ms: int, at_least: int) -> list[tuple[str, int, int]]:
    """(address, audited failures, the first one's ms) of the addresses with at least `at_least` failures
    audited since `since_ms`, by any gateway sharing the store."""
    rows = store.db.query("SELECT actor, COUNT(*) AS n, MIN(ts_ms) AS first FROM audit WHERE kind = ? AND ts_ms > ? "
                          "GROUP BY actor HAVING COUNT(*) >= ?", (FAILED, since_ms, at_least))
    return [(str(r["actor"]), int(r["n"]), int(r["first"])) for r in rows[:MAX_ADDRESSES]]


class SignInGuard:
    def __init__(self, attempts: int, window_s: float, clock: Callable[[], float],
                 audit: Callable[[str, str, dict[str, Any]], None]) -> None:
        self._attempts = attempts
        self._window = window_s
        self._clock = clock
        self._audit = audit
        self._failures: OrderedDict[str, list[float]] = OrderedDict()  # address → failure times, oldest first
        self._shared: dict[str, float] = {}  # address → when its failures on all gateways began (s)

    def read_shared(self, store: Store) -> list[tuple[str, int, int]]:
        """`shared_failures` over this guard's window and limit (on the store thread; then `adopt` the rows)."""
        return shared_failures(store, int((self._clock() - self._window) * 1000), self._attempts)

    def adopt(self, rows: Sequence[tuple[str, int, int]]) -> None:
        """The addresses whose failures over every gateway reach the limit (`shared_failures`): locked out here
        too, until the first of those failures leaves the window. A lockout this gateway did not see happen is
        audited here."""
        shared = {address: first_ms / 1000 for address, _, first_ms in rows}
        for address, count, _ in rows:
            if address not in self._shared and self._local_lock(address) is None:
                self._audit(LOCKED, address, {"failures": count, "for_s": self._window, "across_gateways": True})
        self._shared = shared

    def locked(self, address: str | None) -> int | None:
        """Seconds (rounded up) until `address` may try the admin token again; None if it may now."""
        key = address or UNKNOWN
        first = self._shared.get(key) if self._shared else None
        if first is None:
            return self._local_lock(key)
        return max(self._local_lock(key) or 0, self._left(first) or 0) or None

    def _local_lock(self, key: str) -> int | None:
        times = self._failures.get(key)
        if times is None or len(times) < self._attempts:
            return None
        return self._left(times[0])

    def _left(self, first: float) -> int | None:
        """Seconds (rounded up) until a failure at `first` leaves the window; None once it has."""
        left = first + self._window - self._clock()
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
            self._audit(FAILED, key, {"via": via, "failures": len(times), "window_s": self._window})
        if len(times) == self._attempts:
            self._audit(LOCKED, key, {"failures": len(times), "for_s": self._window})
