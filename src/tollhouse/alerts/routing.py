"""Where an alert goes: a rule's `notify` (channel names and email addresses), else `alerts.default`. An
address goes through the first email channel; a name that is neither is logged once and replaced by the
defaults, so an alert is never dropped for a typo."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from tollhouse.alerts.config import AlertsConfig, EmailChannel

log = logging.getLogger("tollhouse.alerts")

Target = tuple[str, str]  # (channel name, email address or "")


class Router:
    def __init__(self, cfg: AlertsConfig) -> None:
        self.cfg = cfg
        self._email = next((name for name, c in cfg.channels.items() if isinstance(c, EmailChannel)), None)
        self._warned: set[str] = set()

    def targets(self, names: Iterable[str], fallback: Iterable[str] | None = None) -> tuple[Target, ...]:
        """The deliveries for `names` (or, when it is empty or names nothing known, `fallback` or the defaults)."""
        out: list[Target] = []
        for name in names:
            target = self._one(name)
            if target is not None and target not in out:
                out.append(target)
        if out:
            return tuple(out)
        rest = tuple(fallback) if fallback is not None else ()
        if rest:
            return self.targets(rest)
        return tuple(t for t in (self._one(n) for n in self.cfg.default) if t is not None)

    def _one(self, name: str) -> Target | None:
        if name in self.cfg.channels:
            return (name, "")
        if "@" in name and self._email is not None:
            return (self._email, name)
        if name not in self._warned:
            self._warned.add(name)
            log.warning("alerts: notify target %r is neither a channel in alerts.channels nor an address an email "
                        "channel can send to; its alerts go to alerts.default instead", name)
        return None
