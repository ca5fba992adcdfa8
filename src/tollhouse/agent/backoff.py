"""Exponential backoff with jitter, for retrying a control plane that is down (pure: the caller sleeps)."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays base, 2·base, 4·base, ... up to `max_s`, each with "equal jitter" (between half and all of it),
    so a fleet of agents does not retry in step when the control plane comes back."""

    def __init__(self, base_s: float, max_s: float, rand: Callable[[], float] = random.random) -> None:
        if base_s <= 0 or max_s < base_s:
            raise ValueError(f"backoff needs 0 < base_s <= max_s, got base_s={base_s}, max_s={max_s}")
        self._base = base_s
        self._max = max_s
        self._rand = rand
        self.attempts = 0

    def next(self) -> float:
        """The delay before the next attempt (and count this failure)."""
        ceiling = min(self._max, self._base * 2.0 ** min(self.attempts, 60))
        self.attempts += 1
        return ceiling / 2 + self._rand() * ceiling / 2

    def reset(self) -> None:
        self.attempts = 0
