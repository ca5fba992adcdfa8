"""Checking a stored audit trail whole: the hash chain (chain.first_problem), then the signed checkpoints
(checkpoint.verify_checkpoints), reading the entries in pages so memory stays flat. What `tollhouse audit
verify` reports, as data, for the console."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tollhouse.audit.chain import AuditEntry, first_problem
from tollhouse.audit.checkpoint import SigningKeyError, load_public_key, verify_checkpoints
from tollhouse.events.store import Store

PAGE = 20_000


@dataclass(frozen=True, slots=True)
class ChainStatus:
    entries: int
    problem: str | None  # None: intact
    last_seq: int | None
    last_hash: str | None
    checkpoints: int
    last_checkpoint_seq: int | None
    unchecked: str | None = None  # why the signed checkpoints could not be checked (their public key)

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify_trail(store: Store, public_key: Path) -> ChainStatus:
    """The trail's status (blocking: run it off the event loop). `public_key`: checks the signed checkpoints."""
    checkpoints = store.checkpoints()
    covered = {c.seq for c in checkpoints}
    kept: list[AuditEntry] = []  # the entries checkpoints cover, and the last one
    count = 0

    def stream() -> Iterator[AuditEntry]:
        nonlocal count
        after = 0
        while batch := store.audit_entries(after, PAGE):
            for e in batch:
                if e.seq in covered:
                    kept.append(e)
                yield e
            count += len(batch)
            after = batch[-1].seq
            if not kept or kept[-1] is not batch[-1]:
                kept.append(batch[-1])

    problem = first_problem(stream())
    unchecked = None
    if problem is None and checkpoints:
        try:
            problem = verify_checkpoints(kept, checkpoints, load_public_key(public_key))
        except SigningKeyError as exc:
            unchecked = f"{len(checkpoints)} signed checkpoints, but {exc}"
    last = max(kept, key=lambda e: e.seq) if kept else None
    return ChainStatus(count, problem, last.seq if last else None, last.hash if last else None, len(checkpoints),
                       checkpoints[-1].seq if checkpoints else None, unchecked)
