"""The request path's one touch of alerting: a finished call whose verdict names a violation or counted a cap
is appended to an in-memory queue (a deque append: no I/O, no evaluation). The alert service drains it in the
background (alerts/service.py)."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tollhouse.events.model import CallEvent
    from tollhouse.policy.decide import Verdict

Offered = tuple["CallEvent", "Verdict"]


class AlertQueue:
    """Bounded: when the service cannot keep up, the oldest entries go (counted in `dropped`); a rule that
    keeps firing fires again, and budget thresholds are judged on the latest counts."""

    __slots__ = ("_items", "dropped", "enabled")

    def __init__(self, bound: int = 100_000) -> None:
        self._items: deque[Offered] = deque(maxlen=bound)
        self.enabled = False  # the alert service switches it on (channels configured)
        self.dropped = 0

    def offer(self, event: CallEvent, verdict: Verdict | None) -> None:
        """Called once per call, on the request path: keep it a few attribute reads and an append."""
        if not self.enabled or verdict is None:
            return
        decision = verdict.decision
        if (decision is not None and decision.violations) or verdict.usage:
            items = self._items
            if len(items) == items.maxlen:
                self.dropped += 1
            items.append((event, verdict))

    def drain(self) -> list[Offered]:
        items = self._items
        out = list(items)
        items.clear()  # one thread (the event loop) appends and drains: nothing lands between the two
        return out
