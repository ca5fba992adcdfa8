"""Control-plane records the store reads and writes: plain frozen values with their API shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tollhouse.events.model import iso_ts

# Document kinds kept as versions (each write makes version = previous + 1).
POLICY = "policy"
DIRECTORY = "directory"
AGENT_POLICY = "agent_policy"

# Exemption status and decision kinds.
PENDING, APPROVED, DENIED = "pending", "approved", "denied"
REVOKED = "revoked"  # an approved override ended early by a policy owner
OVERRIDE, RULE_EDIT = "override", "rule_edit"


def _iso(ts_ms: int | None) -> str | None:
    return None if ts_ms is None else iso_ts(ts_ms)


@dataclass(frozen=True, slots=True)
class DocumentVersion:
    kind: str
    version: int
    ts_ms: int
    actor: str
    source: str  # api | file | config | ...
    body: dict[str, Any]
    note: str | None

    def json(self) -> dict[str, Any]:
        return {"kind": self.kind, "version": self.version, "ts": iso_ts(self.ts_ms), "ts_ms": self.ts_ms,
                "actor": self.actor, "source": self.source, "note": self.note, "body": self.body}


@dataclass(frozen=True, slots=True)
class Exemption:
    id: str
    created_ms: int
    status: str  # pending | approved | denied
    requester: str
    subject: str
    rule_id: str | None
    provider: str | None
    model: str | None
    team: str | None
    project: str | None
    call_ts_ms: int | None
    justification: str
    reviewer: str | None = None
    decided_ms: int | None = None
    decision_kind: str | None = None  # override | rule_edit (approved), else None
    expires_ms: int | None = None
    note: str | None = None
    client_address: str | None = None  # the address the request came from (queue limits; not shown publicly)
    # An approved override's scope: comma-separated model and provider names or patterns ("*": any). None: the
    # model and provider requested (see control.overrides.grant_of).
    scope_models: str | None = None
    scope_providers: str | None = None
    revoked_ms: int | None = None  # ended early (status revoked) by `revoked_by`
    revoked_by: str | None = None
    expired_ms: int | None = None  # when its expiry was noted (and audited, once)

    def json(self) -> dict[str, Any]:
        return {"id": self.id, "created": _iso(self.created_ms), "created_ms": self.created_ms,
                "status": self.status, "requester": self.requester, "subject": self.subject,
                "rule_id": self.rule_id, "provider": self.provider, "model": self.model, "team": self.team,
                "project": self.project, "call_ts_ms": self.call_ts_ms, "justification": self.justification,
                "reviewer": self.reviewer, "decided_ms": self.decided_ms, "decision_kind": self.decision_kind,
                "expires": _iso(self.expires_ms), "expires_ms": self.expires_ms, "note": self.note,
                "models": _names(self.scope_models), "providers": _names(self.scope_providers),
                "revoked": _iso(self.revoked_ms), "revoked_by": self.revoked_by}


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [n for n in text.split(",") if n]


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A gateway virtual key (`th-...`), stored as a hash; maps to a person."""

    key_hash: str
    prefix: str
    subject: str
    label: str | None
    created_ms: int
    revoked_ms: int | None

    def json(self) -> dict[str, Any]:
        return {**_credential_json(self), "subject": self.subject}


@dataclass(frozen=True, slots=True)
class EnrollmentToken:
    """A token an agent enrolls with, stored as a hash."""

    token_hash: str
    prefix: str
    label: str | None
    created_ms: int
    revoked_ms: int | None

    def json(self) -> dict[str, Any]:
        return _credential_json(self)


def _credential_json(c: KeyRecord | EnrollmentToken) -> dict[str, Any]:
    """The API shape of a hashed secret: never the hash."""
    return {"prefix": c.prefix, "label": c.label, "created_ms": c.created_ms, "revoked_ms": c.revoked_ms,
            "active": c.revoked_ms is None}


@dataclass(frozen=True, slots=True)
class AgentRecord:
    agent_id: str
    hostname: str | None
    version: str | None
    token_prefix: str | None
    first_seen_ms: int
    last_seen_ms: int
    status: dict[str, Any]

    def json(self) -> dict[str, Any]:
        return {"agent_id": self.agent_id, "hostname": self.hostname, "version": self.version,
                "token_prefix": self.token_prefix, "first_seen": iso_ts(self.first_seen_ms),
                "last_seen": iso_ts(self.last_seen_ms), "first_seen_ms": self.first_seen_ms,
                "last_seen_ms": self.last_seen_ms, "status": self.status}


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement of the audit chain's head: entry `seq` has hash `hash`."""

    seq: int
    ts_ms: int
    hash: str
    key_id: str
    signature: str

    def json(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts": iso_ts(self.ts_ms), "ts_ms": self.ts_ms, "hash": self.hash,
                "key_id": self.key_id, "signature": self.signature}


@dataclass(frozen=True, slots=True)
class PendingCounts:
    """The exemption queue as one new request sees it (read in the transaction that files it)."""

    total: int  # pending requests in all
    subject: int  # ... for the request's subject
    address: int  # ... from the request's client address
    duplicate: Exemption | None  # a pending request for the same subject and rule
