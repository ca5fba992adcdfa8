"""Approved one-off overrides (pure): what each one covers, and the set the request path consults.

An override exempts its subject from one rule, for the model and provider of the call that was blocked (the
request carries them). A wider grant is explicit: the approval's `models` and `providers` (names or
shell-style patterns, "*" for any). A request that named no model (or no provider) covers any.

The set is immutable; a gateway builds a new one from its store, an agent from its control plane's bundle, and
swaps it in whole. `digest` identifies its content (the agent bundle's ETag carries it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Any

from tollhouse.events.records import APPROVED, OVERRIDE, Exemption

ANY = "*"
MAX_NAMES = 50  # models or providers one approval may name


def names(text: str | None) -> tuple[str, ...]:
    """A stored scope (comma-separated) as names."""
    return tuple(n for n in (text or "").split(",") if n)


def default_scope(x: Exemption) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What an approval covers unless it says otherwise: the model and provider requested (any, if none)."""
    return (x.model,) if x.model else (ANY,), (x.provider,) if x.provider else (ANY,)


@dataclass(frozen=True, slots=True)
class Grant:
    """One override in force: `subject` may pass rule `rule_id` on calls to `providers` for `models`, until
    `expires_ms`."""

    exemption_id: str
    subject: str
    rule_id: str
    models: tuple[str, ...]
    providers: tuple[str, ...]
    expires_ms: int

    def covers(self, provider: str, model: str | None, now_ms: int) -> bool:
        if self.expires_ms <= now_ms:
            return False
        if not any(p == ANY or fnmatchcase(provider, p) for p in self.providers):
            return False
        if ANY in self.models:
            return True
        return model is not None and any(fnmatchcase(model, m) for m in self.models)

    def json(self) -> dict[str, Any]:
        return {"id": self.exemption_id, "subject": self.subject, "rule_id": self.rule_id,
                "models": list(self.models), "providers": list(self.providers), "expires_ms": self.expires_ms}

    @staticmethod
    def from_json(data: object) -> Grant:
        """A grant from a bundle; ValueError says what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"an exemption must be an object, got {type(data).__name__}")
        texts = {k: v for k in ("id", "subject", "rule_id") if isinstance(v := data.get(k), str) and v}
        lists = {k: tuple(v) for k in ("models", "providers")
                 if isinstance(v := data.get(k), list) and v and all(isinstance(n, str) and n for n in v)}
        expires = data.get("expires_ms")
        bad = [k for k in ("id", "subject", "rule_id") if k not in texts]
        bad += [k for k in ("models", "providers") if k not in lists]
        if not isinstance(expires, int) or isinstance(expires, bool):
            bad.append("expires_ms")
        if bad or not isinstance(expires, int):
            raise ValueError(f"exemption {data.get('id')!r}: missing or invalid {', '.join(bad)}")
        return Grant(texts["id"], texts["subject"], texts["rule_id"], lists["models"], lists["providers"], expires)


def grant_of(x: Exemption) -> Grant | None:
    """The grant of an approved override (None for anything else)."""
    if x.status != APPROVED or x.decision_kind != OVERRIDE or x.rule_id is None or x.expires_ms is None:
        return None
    models, providers = default_scope(x)
    return Grant(x.id, x.subject, x.rule_id, names(x.scope_models) or models,
                 names(x.scope_providers) or providers, x.expires_ms)


_NONE: Mapping[str, str] = MappingProxyType({})


class OverrideSet:
    """The overrides in force, by subject and rule. Immutable."""

    __slots__ = ("_by_subject", "digest", "grants", "size")

    def __init__(self, grants: Iterable[Grant] = ()) -> None:
        self.grants = tuple(sorted(grants, key=lambda g: g.exemption_id))
        by_subject: dict[str, dict[str, list[Grant]]] = {}
        for g in self.grants:
            by_subject.setdefault(g.subject, {}).setdefault(g.rule_id, []).append(g)
        for rules in by_subject.values():
            for held in rules.values():
                held.sort(key=lambda g: -g.expires_ms)  # the longest-lasting first
        self._by_subject: Mapping[str, Mapping[str, tuple[Grant, ...]]] = MappingProxyType(
            {s: MappingProxyType({r: tuple(held) for r, held in rules.items()}) for s, rules in by_subject.items()})
        self.size = len(self.grants)
        content = repr([g.json() for g in self.grants]).encode()
        self.digest = hashlib.sha256(content).hexdigest()[:16]

    @staticmethod
    def of(exemptions: Iterable[Exemption]) -> OverrideSet:
        return OverrideSet(g for g in map(grant_of, exemptions) if g is not None)

    def for_call(self, subject: str, provider: str, model: str | None, now_ms: int) -> Mapping[str, str]:
        """Rule id → exemption id of the subject's overrides that cover this call at `now_ms`."""
        rules = self._by_subject.get(subject)
        if not rules:
            return _NONE
        live: dict[str, str] = {}
        for rule, held in rules.items():
            for g in held:
                if g.covers(provider, model, now_ms):
                    live[rule] = g.exemption_id
                    break
        return live or _NONE

    def held_by(self, subject: str, now_ms: int) -> tuple[Grant, ...]:
        """The subject's overrides in force at `now_ms`, whatever they cover."""
        rules = self._by_subject.get(subject) or {}
        return tuple(g for held in rules.values() for g in held if g.expires_ms > now_ms)
