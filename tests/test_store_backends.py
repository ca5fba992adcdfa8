"""The store on both backends (SQLite, PostgreSQL): events, ledger history, the audit chain, keys,
schema upgrades that keep every row, and a lost PostgreSQL connection."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from conftest import free_port
from test_store_control import T0, event
from tollhouse.audit.chain import GENESIS, canonical, entry_hash, first_problem
from tollhouse.events.db import PostgresDb, SqliteDb, StoreConflict, StoreError
from tollhouse.events.model import CallEvent, event_json
from tollhouse.events.schema import migrations
from tollhouse.events.store import Store, open_store
from tollhouse.gateway.state import unsaved_history
from tollhouse.keys import create_key, sha256_hex

DATA = Path(__file__).parent / "data"


def _mixed_events() -> list[CallEvent]:
    """Three people on two teams and two providers over two hours, with refusals and failures."""
    out = []
    for n in range(120):
        e = event(n)._replace(ts_ms=T0 + n * 61_000, subject=("alice", "bob", "carol")[n % 3],
                              team="research" if n % 3 == 2 else "platform", project="checkout" if n % 4 else None,
                              provider="anthropic" if n % 5 == 0 else "openai", cost_nusd=n * 1000,
                              input_tokens=n, output_tokens=2 * n, status=500 if n % 7 == 0 else 200,
                              stream=n % 2 == 0, latency_ms=n / 4)
        out.append(e._replace(decision="block", cost_nusd=None, output_tokens=0) if n % 11 == 0 else e)
    return out


def test_events_round_trip_identically(store: Store) -> None:
    events = _mixed_events()
    assert store.insert_events(events[:70]) == 70
    assert store.insert_events(events) == 50
    rows = store.list_events(200)
    assert [r["id"] for r in rows] == [e.id for e in reversed(events)]
    assert event_json(rows[-1]) == event_json(events[0]._asdict())
    assert event_json(rows[0])["stream"] is False and event_json(rows[1])["latency_ms"] == 118 / 4
    assert [r["subject"] for r in store.list_events(3, subject="bob")] == ["bob"] * 3
    older = store.list_events(2, before_seq=rows[9]["seq"])
    assert [r["id"] for r in older] == [rows[10]["id"], rows[11]["id"]]


def test_every_column_keeps_its_value_and_type_through_a_batch_insert(store: Store) -> None:
    """SQLite takes a batch as multi-row inserts of bound values: text, integers, reals, nulls and flags must
    come back exactly as a row-by-row insert would store them."""
    events = [e._replace(model="modèle-日本 \"quoted\"", cost_nusd=2**53 + n, latency_ms=n + 0.1, error=None,
                         client_disconnected=n % 2 == 1)
              for n, e in enumerate(_mixed_events()[:10])]
    assert store.insert_events(events) == 10
    rows = list(reversed(store.list_events(20)))
    assert [event_json(r) for r in rows] == [event_json(e._asdict()) for e in events]
    assert all(isinstance(r["cost_nusd"], int) and isinstance(r["latency_ms"], float) for r in rows)


@pytest.mark.parametrize(("scope", "ids"), [("subject", ["alice"]), ("team", ["platform", "research"]),
                                            ("project", ["checkout"]), ("org", ["acme"])])
def test_usage_history_and_totals_match_a_brute_force_sum(store: Store, scope: str, ids: list[str]) -> None:
    events = _mixed_events()
    store.insert_events(events)
    since, bucket = T0 + 30 * 61_000, 600_000
    expected: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for b, provider, *usage in unsaved_history(events, scope, frozenset(ids), since, bucket):
        expected[b, provider] = [x + y for x, y in zip(expected[b, provider], usage, strict=True)]
    got = {(b, p): list(rest) for b, p, *rest in store.usage_history(scope, ids, since, bucket)}
    assert got == dict(expected) and got
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for (_, provider), usage in expected.items():
        totals[provider] = [x + y for x, y in zip(totals[provider], usage, strict=True)]
    assert {p: list(v) for p, v in store.usage_totals(scope, ids, since, T0 + 10**9).items()} == dict(totals)
    assert store.usage_totals(scope, ids, T0 + 10**9, T0 + 2 * 10**9) == {}


def test_audit_chain_and_keys(store: Store) -> None:
    entries = [store.append_audit(T0 + i, "policy.changed", "admin", {"version": i, "ü": [1, None]})
               for i in range(5)]
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5] and entries[1].prev_hash == entries[0].hash
    assert store.audit_entries() == entries and first_problem(store.audit_entries()) is None
    assert store.audit_entries(after_seq=3) == entries[3:] and store.audit_entries(1, limit=2) == entries[1:3]
    key, record = create_key(store, "alice", "laptop")
    assert store.find_key(sha256_hex(key)) == record and store.find_key(sha256_hex("th-other")) is None
    assert store.revoke_key(record.prefix) == 1 and store.list_keys()[0].revoked_ms is not None
    store.add_checkpoint(5, T0, entries[4].hash, "k1", "sig")
    with pytest.raises(StoreConflict):
        store.add_checkpoint(5, T0, entries[4].hash, "k1", "sig")
    assert store.schema_version() == len(migrations("sqlite"))


def _assert_upgraded(store: Store, old_ids: list[str]) -> None:
    """Everything written at version 3 is still there, and the later tables work."""
    assert store.schema_version() == len(migrations("sqlite"))
    assert sorted(r["id"] for r in store.list_events(10)) == old_ids
    assert store.insert_events([event(1)._replace(id=old_ids[0])]) == 0
    old_audit = store.audit_entries()
    assert len(old_audit) == 2 and first_problem(old_audit) is None
    assert store.append_audit(T0 + 10**6, "test", "me", {}).prev_hash == old_audit[-1].hash
    assert first_problem(store.audit_entries()) is None
    assert store.find_key("hash-alice") is not None and store.list_keys()[0].subject == "alice"
    assert store.add_document("policy", T0, "admin", "api", {"rules": []}).version == 1
    assert store.upsert_agent("a1", "h", "v", None, T0, {}).first_seen_ms == T0


def test_a_version_3_sqlite_store_from_the_previous_release_upgrades_without_losing_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript((DATA / "store_v3_sqlite.sql").read_text())
    db.close()
    store = open_store(f"sqlite:///{path}", tmp_path)
    _assert_upgraded(store, ["v3-1", "v3-2", "v3-3"])
    spend = store.usage_totals("subject", ["alice"], T0, T0 + 10**9)
    assert spend == {"openai": (100_000_000, 101, 11, 1)}  # the refused call does not count
    store.close()
    again = open_store(f"sqlite:///{path}", tmp_path)
    assert again.schema_version() == len(migrations("sqlite"))  # opening again changes nothing


def test_every_upgrade_from_version_3_keeps_rows_on_both_backends(store_url: str, tmp_path: Path) -> None:
    db = PostgresDb(store_url) if store_url.startswith("postgresql") else SqliteDb(Path(store_url[10:]))
    with db.transaction():  # a database as version 3 of the schema left it, with rows in every table
        for statements in migrations(db.dialect)[:3]:
            for statement in statements:
                db.execute(statement)
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (3)")
        v3 = CallEvent._fields[:CallEvent._fields.index("endpoint_class")]  # the columns schema 3 had
        db.executemany(f"INSERT INTO events ({', '.join(v3)}) VALUES ({', '.join('?' for _ in v3)})",
                       [event(n)._replace(id=f"v3-{n}")[:len(v3)] for n in (1, 2, 3)])
        db.execute("INSERT INTO gateway_keys VALUES ('hash-alice', 'th-abcdefg', 'alice', NULL, ?, NULL)", (T0,))
        prev = GENESIS
        for seq in (1, 2):
            digest = entry_hash(prev, canonical(seq, T0, "gateway.started", "gateway", {}))
            db.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (seq, T0, "gateway.started", "gateway", "{}", prev, digest))
            prev = digest
    db.close()
    store = open_store(store_url, tmp_path)
    _assert_upgraded(store, ["v3-1", "v3-2", "v3-3"])
    store.close()


def test_a_store_newer_than_the_code_is_refused(store_url: str, tmp_path: Path) -> None:
    store = open_store(store_url, tmp_path)
    store.db.execute("UPDATE schema_version SET version = 99")
    store.close()
    with pytest.raises(StoreError, match="schema version 99, newer than this Tollhouse knows"):
        open_store(store_url, tmp_path)


def test_a_lost_postgres_connection_is_a_store_error_and_the_retry_reconnects(postgres_url: str,
                                                                              tmp_path: Path) -> None:
    store = open_store(postgres_url, tmp_path)
    store.insert_events([event(1)])
    with psycopg.connect(postgres_url, autocommit=True) as admin:  # the server drops the gateway's session
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name = 'tollhouse' AND datname = current_database()")
    with pytest.raises(StoreError) as exc:
        store.insert_events([event(2)])
    host = urlsplit(postgres_url).netloc.split("@")[1]
    assert f"PostgreSQL at {host}" in str(exc.value) and "store.url" in str(exc.value)
    assert store.insert_events([event(2), event(1)]) == 1  # the event writer's retry: nothing lost or doubled
    assert len(store.list_events(10)) == 2
    store.close()


def test_an_unreachable_postgres_is_named_without_its_password(tmp_path: Path) -> None:
    port = free_port()
    with pytest.raises(StoreError) as exc:
        open_store(f"postgresql://tollhouse:s3cret-pw@127.0.0.1:{port}/th", tmp_path)
    message = str(exc.value)
    assert f"PostgreSQL at 127.0.0.1:{port} (database th)" in message and "s3cret-pw" not in message
    assert "Check that PostgreSQL is running" in message


def test_without_postgresql_binaries_the_postgres_tests_fail_not_skip(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "lost_postgres",
                             str(Path(__file__))], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                            env={**os.environ, "TOLLHOUSE_PG_BIN": str(tmp_path / "no-such-dir")})
    assert result.returncode == 1 and "1 error" in result.stdout and "skipped" not in result.stdout
    assert "PostgreSQL tests need a local server" in result.stdout and "apt-get install postgresql-15" in result.stdout
