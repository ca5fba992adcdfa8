"""An alert: what happened, in words a person on call reads, and the key that makes it happen once."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

KINDS = ("rule", "rule.summary", "budget", "anomaly", "exemption.requested", "exemption.decided", "security", "test")


def alert_id(key: str) -> str:
    """The alert's id (and so its deliveries' idempotency keys): the same key gives the same id on every
    gateway, so an alert two processes raise is stored, and sent, once."""
    return "al_" + hashlib.sha256(key.encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class Alert:
    key: str  # what makes two alerts the same one (rule, subject and window; cap, period and threshold; ...)
    kind: str  # one of KINDS
    severity: str  # info | warning | critical
    title: str  # one line: what happened
    text: str  # the explanation, a sentence or two
    fields: tuple[tuple[str, str], ...] = ()  # (label, value): rule, subject, team, model, cost, ...
    links: tuple[tuple[str, str], ...] = ()  # (label, url)
    closes_ms: int | None = None  # a windowed alert counts further firings until then (then a summary follows)

    @property
    def id(self) -> str:
        return alert_id(self.key)

    def body(self) -> str:
        return orjson.dumps({"key": self.key, "text": self.text, "fields": self.fields,
                             "links": self.links}).decode()


@dataclass(frozen=True, slots=True)
class Stored:
    """An alert as the outbox holds it, with how many times it fired."""

    id: str
    created_ms: int
    kind: str
    severity: str
    title: str
    text: str
    fields: tuple[tuple[str, str], ...]
    links: tuple[tuple[str, str], ...]
    count: int

    @classmethod
    def of(cls, row: dict[str, Any]) -> Stored:
        body = orjson.loads(row["body"])
        return cls(row["id"], int(row["created_ms"]), row["kind"], row["severity"], row["title"], body["text"],
                   tuple((str(a), str(b)) for a, b in body["fields"]),
                   tuple((str(a), str(b)) for a, b in body["links"]), int(row["fire_count"]))


@dataclass(frozen=True, slots=True)
class Delivery:
    """One alert to one channel (and, for email, one address)."""

    alert: Stored
    channel: str
    target: str  # an email address, or "" (the channel's own destination)
    attempts: int

    @property
    def idempotency_key(self) -> str:
        """Sent as webhook-id / Message-ID: a receiver that sees it twice knows it is the same message."""
        suffix = f".{hashlib.sha256(self.target.encode()).hexdigest()[:8]}" if self.target else ""
        return f"{self.alert.id}.{self.channel}{suffix}"
