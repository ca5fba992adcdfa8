"""Hash chaining (pure): each entry's hash covers its canonical content and the previous hash."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

GENESIS = "0" * 64


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    ts_ms: int
    kind: str
    actor: str
    data: dict[str, Any]
    prev_hash: str
    hash: str

    def json(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts_ms": self.ts_ms, "kind": self.kind, "actor": self.actor, "data": self.data,
                "prev_hash": self.prev_hash, "hash": self.hash}


def canonical(seq: int, ts_ms: int, kind: str, actor: str, data: dict[str, Any]) -> bytes:
    return orjson.dumps({"seq": seq, "ts_ms": ts_ms, "kind": kind, "actor": actor, "data": data},
                        option=orjson.OPT_SORT_KEYS)


def entry_hash(prev_hash: str, content: bytes) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + content).hexdigest()


def first_problem(entries: Iterable[AuditEntry]) -> str | None:
    """None when the chain is intact; else which entry is the first that was edited, removed,
    reordered or inserted, and how that shows."""
    expected_seq = 1
    prev = GENESIS
    for e in entries:
        if e.seq != expected_seq:
            what = "missing (removed)" if e.seq > expected_seq else "out of order or duplicated"
            return f"entry #{expected_seq} is {what}: found #{e.seq} where #{expected_seq} should be"
        if e.prev_hash != prev:
            return f"entry #{e.seq}: prev_hash does not match entry #{e.seq - 1} (reordered or inserted)"
        if entry_hash(prev, canonical(e.seq, e.ts_ms, e.kind, e.actor, e.data)) != e.hash:
            return f"entry #{e.seq} ({e.kind}): content does not match its hash (edited)"
        prev = e.hash
        expected_seq += 1
    return None
