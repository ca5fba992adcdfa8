"""Gateway virtual keys (`th-...`): map to a person; the gateway swaps in the real provider key."""

from __future__ import annotations

import hashlib
import secrets
import time

from tollhouse.events.records import EnrollmentToken, KeyRecord
from tollhouse.events.store import Store
from tollhouse.events.writer import StoreRunner

KEY_PREFIX = "th-"
_POSITIVE_TTL_S = 30.0  # a revoked key stops working within this long on every gateway
_NEGATIVE_TTL_S = 5.0


def sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_key(store: Store, subject: str, label: str | None = None) -> tuple[str, KeyRecord]:
    key = new_key()
    record = store.add_key(sha256_hex(key), key[:10], subject, label)
    return key, record


ENROLLMENT_CACHE_S = 5.0


class KeyCache:
    """Key hash → subject, read through to the store with short TTLs (no DB trip per request)."""

    def __init__(self, runner: StoreRunner) -> None:
        self._runner = runner
        self._entries: dict[str, tuple[str | None, float]] = {}

    async def subject_for(self, key: str) -> str | None:
        digest = sha256_hex(key)
        hit = self._entries.get(digest)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        record = await self._runner.run(lambda s: s.find_key(digest))
        subject = record.subject if record is not None and record.revoked_ms is None else None
        ttl = _POSITIVE_TTL_S if subject else _NEGATIVE_TTL_S
        if len(self._entries) > 100_000:
            self._entries.clear()
        self._entries[digest] = (subject, now + ttl)
        return subject

    def forget(self) -> None:
        self._entries.clear()


class EnrollmentCache:
    """Token hash → the token's record while it is valid, re-read from the store every few seconds (a
    revoked token stops working within that time everywhere; at once on the gateway that revoked it)."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[EnrollmentToken | None, float]] = {}

    def get(self, digest: str) -> tuple[bool, EnrollmentToken | None]:
        hit = self._entries.get(digest)
        if hit is None or hit[1] < time.monotonic():
            return False, None
        return True, hit[0]

    def put(self, digest: str, record: EnrollmentToken | None) -> None:
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[digest] = (record, time.monotonic() + ENROLLMENT_CACHE_S)

    def forget(self) -> None:
        self._entries.clear()
