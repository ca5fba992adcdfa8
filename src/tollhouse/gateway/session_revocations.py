"""Console sessions that end before their cookie says so: signed out, or all of a user's revoked by an admin.

A session cookie is signed and carries its own expiry (gateway/console_session.py), so on its own a copy of it
(a shared machine, a leaked header, a browser profile synced elsewhere) would keep working after its user
signed out, until `console.session_hours` ran out. Each session has an id; `Revocations` keeps the ids signed
out and, per user, the moment up to which all of their sessions are revoked, in the store's
`console_revocations` table, and publishes them as one immutable `Revoked` snapshot that `session_user` checks
on every request (a set and a dict lookup: no I/O).

- On this gateway at once: a sign-out or a revocation is in the snapshot before the request answers.
- Gateways sharing the store: each reloads the table every second with its other control-plane changes
  (gateway/app.py `_follow_store`), so a copied cookie stops working everywhere within about a second.
- A store that cannot be written: the revocation holds on this gateway at once and is written at each reload
  until it is stored (the log says so meanwhile).
- Rows are deleted once every cookie they refuse has expired, so the table holds at most one session
  lifetime's sign-outs.

Each sign-in is also noted (`SignedIn`, table `console_sessions`, deleted once expired) so that admins can see who
is signed in and end one session or all of a person's (console/sessions.py, gateway/sessions_api.py). The list is
for people only: a session works whether or not it is listed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

import orjson

from tollhouse.events.store import Store, StoreError
from tollhouse.events.writer import StoreRunner
from tollhouse.snapshot import Published

log = logging.getLogger("tollhouse.console")

SESSION, USER = "session", "user"


class Session(NamedTuple):
    """What a session cookie says about its session (besides who and which role)."""

    id: str
    issued_ms: int
    expires_s: int


class Row(NamedTuple):
    kind: str  # SESSION: `key` is a session id; USER: `key` is a name, sessions issued up to `at_ms` are revoked
    key: str
    at_ms: int
    until_ms: int  # when every cookie it refuses has expired


_EMPTY: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Revoked:
    """The sessions that no longer count (an immutable snapshot)."""

    sessions: frozenset[str] = frozenset()
    users: Mapping[str, int] = field(default_factory=lambda: _EMPTY)  # casefolded name → sessions issued up to ms

    def refuses(self, name: str, session: Session) -> bool:
        if session.id in self.sessions:
            return True
        until = self.users.get(name.casefold()) if self.users else None
        return until is not None and session.issued_ms <= until

    @staticmethod
    def of(rows: Iterable[Row]) -> Revoked:
        sessions: set[str] = set()
        users: dict[str, int] = {}
        for row in rows:
            if row.kind == SESSION:
                sessions.add(row.key)
            elif row.kind == USER:  # names as people type them: "Ada@Acme.example" ends ada@acme.example's
                key = row.key.casefold()
                users[key] = max(users.get(key, row.at_ms), row.at_ms)
        return Revoked(frozenset(sessions), MappingProxyType(users))


_SAVE = (
    "INSERT INTO console_revocations (kind, key, at_ms, until_ms) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (kind, key) DO UPDATE SET "
    "at_ms = CASE WHEN excluded.at_ms > console_revocations.at_ms THEN excluded.at_ms "
    "ELSE console_revocations.at_ms END, "
    "until_ms = CASE WHEN excluded.until_ms > console_revocations.until_ms THEN excluded.until_ms "
    "ELSE console_revocations.until_ms END")


def save_rows(store: Store, rows: Sequence[Row], now_ms: int) -> None:
    """Store `rows` (a later revocation of a user widens theirs) and drop the rows whose cookies all expired."""
    with store.db.transaction():
        store.db.executemany(_SAVE, [tuple(r) for r in rows])
        store.db.execute("DELETE FROM console_revocations WHERE until_ms < ?", (now_ms,))


def load_rows(store: Store, now_ms: int) -> list[Row]:
    rows = store.db.query("SELECT kind, key, at_ms, until_ms FROM console_revocations WHERE until_ms >= ? "
                          "ORDER BY kind, key", (now_ms,))
    return [Row(r["kind"], r["key"], int(r["at_ms"]), int(r["until_ms"])) for r in rows]


class SignedIn(NamedTuple):
    """A console session as it began (`console_sessions`): listed for admins, who can end it."""

    id: str
    name: str
    role: str
    via: str  # admin_token | oidc
    issued_ms: int
    expires_ms: int

    @property
    def session(self) -> Session:
        return Session(self.id, self.issued_ms, self.expires_ms // 1000)


def save_signed_in(store: Store, row: SignedIn) -> None:
    """Note a session that began, and forget the ones that have ended by expiry."""
    with store.db.transaction():
        store.db.execute("INSERT INTO console_sessions (id, name, role, via, issued_ms, expires_ms) "
                         "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING", tuple(row))
        store.db.execute("DELETE FROM console_sessions WHERE expires_ms < ?", (row.issued_ms,))


def load_signed_in(store: Store, now_ms: int) -> list[SignedIn]:
    """The sessions not yet expired, newest first (revoked ones included: `Revoked.refuses` tells them apart)."""
    rows = store.db.query("SELECT id, name, role, via, issued_ms, expires_ms FROM console_sessions "
                          "WHERE expires_ms > ? ORDER BY issued_ms DESC, id", (now_ms,))
    return [SignedIn(r["id"], r["name"], r["role"], r["via"], int(r["issued_ms"]), int(r["expires_ms"]))
            for r in rows]


class Revocations:
    """Publishes `Revoked` (`published`) from the store and from this gateway's own revocations."""

    def __init__(self, runner: StoreRunner, clock: Callable[[], float], spill: Path | None = None) -> None:
        self.published: Published[Revoked] = Published(Revoked())
        self._runner = runner
        self._clock = clock
        self._stored: tuple[Row, ...] = ()  # as last loaded
        self._local: list[Row] = []  # made here, not yet seen in a load (kept until one shows them stored)
        self._unsaved: list[Row] = []  # made here, not yet written (the store refused)
        # Revocations the store refused, kept in the data dir too, so that a restart (or a kill) before the store
        # is back loses none: read at start, written to the store first, then the file is removed.
        self._spill = spill
        for row in _read_spill(spill):
            self._local.append(row)
            self._unsaved.append(row)
        if self._unsaved:
            self._publish()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def began(self, row: SignedIn) -> None:
        """Note a new session for the admins' list. A store that cannot take it costs the listing only (the
        cookie is what signs in, and it can still be ended by its user's name)."""
        try:
            await self._runner.run(lambda s: save_signed_in(s, row))
        except StoreError as exc:
            log.error("the console session of %s could not be noted in the store (%s); it works, but is not "
                      "listed on /console/sessions", row.name, exc)

    async def signed_in(self) -> list[SignedIn]:
        """The sessions that still work (not expired, not ended), newest first. Raises StoreError."""
        now_ms = self._now_ms()
        return self.working(await self._runner.run(lambda s: load_signed_in(s, now_ms)))

    def working(self, rows: Sequence[SignedIn]) -> list[SignedIn]:
        """Of the sessions `load_signed_in` read, those not ended."""
        revoked = self.published.current
        return [r for r in rows if not revoked.refuses(r.name, r.session)]

    async def sign_out(self, session: Session) -> None:
        """Revoke one session (its user signed out) until its cookie expires."""
        await self._add(Row(SESSION, session.id, self._now_ms(), session.expires_s * 1000))

    async def revoke_user(self, name: str, longest_s: int) -> int:
        """Revoke every session of `name` signed in until now (`longest_s`: the longest a session lasts).
        Returns the moment (ms) up to which their sessions are revoked."""
        now_ms = self._now_ms()
        await self._add(Row(USER, name, now_ms, now_ms + longest_s * 1000))
        return now_ms

    async def refresh(self) -> None:
        """Write what the store refused before, then reload every gateway's revocations. Raises StoreError
        (the snapshot in force stays, this gateway's own revocations in it)."""
        await self._write()
        now_ms = self._now_ms()
        stored = tuple(await self._runner.run(lambda s: load_rows(s, now_ms)))
        local = [r for r in self._local if r.until_ms >= now_ms]
        if stored == self._stored and local == self._local:
            return  # (every second, usually: nothing to republish)
        have = set(stored)
        self._stored = stored
        self._local = [r for r in local if r not in have]
        self._publish()

    async def _add(self, row: Row) -> None:
        self._local.append(row)
        self._unsaved.append(row)
        self._publish()  # in force here before the store is written
        try:
            await self._write()
        except StoreError as exc:
            kept = _append_spill(self._spill, row)
            log.error("a console session revocation could not be stored (%s); it holds on this gateway and is "
                      "written when the store is back%s", exc,
                      f" (kept in {self._spill} meanwhile)" if kept else "; it is lost if this gateway stops first")

    async def _write(self) -> None:
        if not self._unsaved:
            return
        rows, now_ms = list(self._unsaved), self._now_ms()
        await self._runner.run(lambda s: save_rows(s, rows, now_ms))
        self._unsaved = [r for r in self._unsaved if r not in rows]
        if not self._unsaved and self._spill is not None:
            self._spill.unlink(missing_ok=True)

    def _publish(self) -> None:
        self.published.publish(Revoked.of([*self._stored, *self._local]))


def _read_spill(path: Path | None) -> list[Row]:
    if path is None or not path.exists():
        return []
    rows: list[Row] = []
    try:
        for line in path.read_text().splitlines():
            try:
                kind, key, at_ms, until_ms = orjson.loads(line)
                rows.append(Row(str(kind), str(key), int(at_ms), int(until_ms)))
            except (orjson.JSONDecodeError, ValueError, TypeError):
                log.error("skipping an unreadable line of %s (a write cut short?)", path)
    except OSError as exc:
        log.error("cannot read the console session revocations kept in %s: %s", path, exc)
    return rows


def _append_spill(path: Path | None, row: Row) -> bool:
    """Append a revocation the store refused to the data dir's file (synced); False if that fails too."""
    if path is None:
        return False
    try:
        with path.open("ab") as out:
            out.write(orjson.dumps(list(row)) + b"\n")
            out.flush()
            os.fsync(out.fileno())
        return True
    except OSError as exc:
        log.error("cannot keep a console session revocation in %s either: %s", path, exc)
        return False

