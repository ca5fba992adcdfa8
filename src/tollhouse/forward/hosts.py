"""What the forward proxy saw, by host and person: connections, bytes each way, first and last seen.

The proxy notes each connection in a `HostBook` (in memory, on the event loop); a flusher adds the book's
tallies to the store's `forward_hosts` table in one batch every few seconds (not a write per connection).
`list_hosts` reads them back per host, for `GET /api/v1/hosts`. Rows not seen for
`forward_proxy.hosts_retention_days` are deleted (`prune_hosts`, hourly): a client that CONNECTs to ever new
names (denied ones included) cannot grow the table, or the listing's work, without bound over time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from tollhouse.events.store import Store


@dataclass(slots=True)
class Tally:
    connections: int = 0
    intercepted: int = 0
    denied: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    first_ms: int = 0
    last_ms: int = 0


class HostRow(NamedTuple):
    host: str
    person: str
    connections: int
    intercepted: int
    denied: int
    bytes_up: int
    bytes_down: int
    first_ms: int
    last_ms: int


class HostBook:
    """Tallies not yet in the store, keyed by (host, person)."""

    MAX_KEYS = 100_000  # beyond this many unflushed (host, person) pairs new ones are dropped (and counted)

    def __init__(self) -> None:
        self._pending: dict[tuple[str, str], Tally] = {}
        self.dropped = 0

    def _tally(self, host: str, person: str, now_ms: int) -> Tally | None:
        key = (host, person)
        tally = self._pending.get(key)
        if tally is None:
            if len(self._pending) >= self.MAX_KEYS:
                self.dropped += 1
                return None
            tally = self._pending[key] = Tally(first_ms=now_ms)
        tally.last_ms = max(tally.last_ms, now_ms)
        return tally

    def connection(self, host: str, person: str, now_ms: int, *, intercepted: bool = False,
                   denied: bool = False) -> None:
        tally = self._tally(host, person, now_ms)
        if tally is not None:
            tally.connections += 1
            tally.intercepted += intercepted
            tally.denied += denied

    def transferred(self, host: str, person: str, now_ms: int, up: int, down: int) -> None:
        tally = self._tally(host, person, now_ms)
        if tally is not None:
            tally.bytes_up += up
            tally.bytes_down += down

    def take(self) -> list[HostRow]:
        pending, self._pending = self._pending, {}
        return [HostRow(h, p, t.connections, t.intercepted, t.denied, t.bytes_up, t.bytes_down, t.first_ms,
                        t.last_ms) for (h, p), t in pending.items()]

    def restore(self, rows: Sequence[HostRow]) -> None:
        """Put back tallies a failed flush took (added to whatever arrived since)."""
        for row in rows:
            tally = self._tally(row.host, row.person, row.last_ms)
            if tally is not None:
                tally.connections += row.connections
                tally.intercepted += row.intercepted
                tally.denied += row.denied
                tally.bytes_up += row.bytes_up
                tally.bytes_down += row.bytes_down
                tally.first_ms = min(tally.first_ms, row.first_ms)

    def __len__(self) -> int:
        return len(self._pending)


_COLUMNS = "host, person, agent, connections, intercepted, denied, bytes_up, bytes_down, first_ms, last_ms"
_ADD = (
    f"INSERT INTO forward_hosts ({_COLUMNS}) VALUES (?, ?, '', ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (host, person, agent) DO UPDATE SET "
    "connections = forward_hosts.connections + excluded.connections, "
    "intercepted = forward_hosts.intercepted + excluded.intercepted, "
    "denied = forward_hosts.denied + excluded.denied, "
    "bytes_up = forward_hosts.bytes_up + excluded.bytes_up, "
    "bytes_down = forward_hosts.bytes_down + excluded.bytes_down, "
    "first_ms = CASE WHEN excluded.first_ms < forward_hosts.first_ms THEN excluded.first_ms "
    "ELSE forward_hosts.first_ms END, "
    "last_ms = CASE WHEN excluded.last_ms > forward_hosts.last_ms THEN excluded.last_ms "
    "ELSE forward_hosts.last_ms END")
# an agent reports its own running totals: the latest report replaces the row (resending is harmless)
_REPLACE = (
    f"INSERT INTO forward_hosts ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (host, person, agent) DO UPDATE SET connections = excluded.connections, "
    "intercepted = excluded.intercepted, denied = excluded.denied, bytes_up = excluded.bytes_up, "
    "bytes_down = excluded.bytes_down, first_ms = excluded.first_ms, last_ms = excluded.last_ms "
    "WHERE excluded.last_ms >= forward_hosts.last_ms")


def save_hosts(store: Store, rows: Sequence[HostRow]) -> None:
    """Add this process's tallies to its stored totals (one transaction)."""
    if rows:
        with store.db.transaction():
            store.db.executemany(_ADD, [tuple(r) for r in rows])


def save_agent_hosts(store: Store, agent: str, rows: Sequence[HostRow]) -> None:
    """An agent's reported totals (its own rows, replaced)."""
    if rows:
        with store.db.transaction():
            store.db.executemany(_REPLACE, [(r.host, r.person, agent, *tuple(r)[2:]) for r in rows])


def prune_hosts(store: Store, before_ms: int) -> int:
    """Delete the rows (this gateway's and agents') last seen before `before_ms`; how many."""
    with store.db.transaction():
        return store.db.execute("DELETE FROM forward_hosts WHERE last_ms < ?", (before_ms,))


def own_hosts_since(store: Store, since_ms: int, limit: int) -> list[HostRow]:
    """This process's own totals (what an agent reports), rows seen at or after `since_ms`, oldest first."""
    rows = store.db.query(
        "SELECT host, person, connections, intercepted, denied, bytes_up, bytes_down, first_ms, last_ms "
        "FROM forward_hosts WHERE agent = '' AND last_ms >= ? ORDER BY last_ms, host, person LIMIT ?",
        (since_ms, limit))
    return [HostRow(r["host"], r["person"], *(int(r[c]) for c in HostRow._fields[2:])) for r in rows]


def list_hosts(store: Store, since_ms: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
    """Hosts seen since `since_ms`, most recently seen first: totals over this gateway and every agent, the
    people who used each, and how many agents reported it."""
    rows = store.db.query(
        "SELECT host, person, agent, connections, intercepted, denied, bytes_up, bytes_down, first_ms, last_ms "
        "FROM forward_hosts WHERE last_ms >= ? ORDER BY host", (since_ms,))
    hosts: dict[str, dict[str, Any]] = {}
    people: dict[str, set[str]] = {}
    agents: dict[str, set[str]] = {}
    for r in rows:
        h = hosts.get(r["host"])
        if h is None:
            h = hosts[r["host"]] = {"host": r["host"], "connections": 0, "intercepted": 0, "denied": 0,
                                    "bytes_up": 0, "bytes_down": 0, "first_ms": int(r["first_ms"]),
                                    "last_ms": int(r["last_ms"])}
            people[r["host"]], agents[r["host"]] = set(), set()
        for column in ("connections", "intercepted", "denied", "bytes_up", "bytes_down"):
            h[column] += int(r[column])
        h["first_ms"] = min(h["first_ms"], int(r["first_ms"]))
        h["last_ms"] = max(h["last_ms"], int(r["last_ms"]))
        people[r["host"]].add(r["person"])
        if r["agent"]:
            agents[r["host"]].add(r["agent"])
    for host, h in hosts.items():
        h["people"] = sorted(people[host])
        h["agents"] = len(agents[host])
    return sorted(hosts.values(), key=lambda h: (-h["last_ms"], h["host"]))[:limit]
