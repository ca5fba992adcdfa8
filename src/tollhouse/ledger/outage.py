"""Counter-store outages as the audit trail sees them: one entry when an outage starts, a reminder at
most once a minute while it lasts (with how many calls failed open or closed), one when it ends.

Every affected call is still counted in a metric and, when refused, audited as a blocked call; this keeps
an outage at a thousand calls a second from writing a thousand extra audit entries a second.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Record = Callable[[str, dict[str, Any]], None]


class OutageTracker:
    def __init__(self, record: Record, remind_every_ms: int = 60_000) -> None:
        self._record = record
        self._remind_ms = remind_every_ms
        self._since_ms: int | None = None
        self._last_ms = 0
        self._failed = {"open": 0, "closed": 0}

    @property
    def ongoing(self) -> bool:
        return self._since_ms is not None

    def failed(self, now_ms: int, how: str, detail: dict[str, Any]) -> None:
        """A call could not reach the counters and failed `how` ("open" or "closed")."""
        self._failed[how] += 1
        if self._since_ms is None:
            self._since_ms = self._last_ms = now_ms
            self._record("ledger.unavailable", {**detail, "failed": how})
        elif now_ms - self._last_ms >= self._remind_ms:
            self._last_ms = now_ms
            self._record("ledger.unavailable", {**detail, "failed": how, "ongoing_since_ms": self._since_ms,
                                                "calls_failed_open": self._failed["open"],
                                                "calls_failed_closed": self._failed["closed"]})

    def succeeded(self, now_ms: int) -> None:
        """The counters answered again: close the outage, if there was one."""
        if self._since_ms is None:
            return
        self._record("ledger.recovered", {"outage_ms": now_ms - self._since_ms,
                                          "calls_failed_open": self._failed["open"],
                                          "calls_failed_closed": self._failed["closed"]})
        self._since_ms = None
        self._failed = {"open": 0, "closed": 0}
