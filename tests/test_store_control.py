"""The store's control-plane tables: versioned documents, exemptions, enrollment tokens, agents,
audit checkpoints; and idempotent event ingest."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tollhouse.events.model import CallEvent
from tollhouse.events.records import APPROVED, DENIED, OVERRIDE, PENDING, RULE_EDIT, Exemption
from tollhouse.events.store import Store, open_store

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def event(n: int, subject: str = "alice") -> CallEvent:
    return CallEvent(f"e{n:06d}", T0 + n, subject, "employee", "platform", None, None, "openai", "chat",
                     "/v1/chat/completions", True, "gpt-4o", "gpt-4o", False, 200, 10, 5, 0, 0, 1000, "response",
                     "allow", None, None, 1.5, None, False, None)


def exemption(n: int, created_ms: int = T0, subject: str = "alice") -> Exemption:
    return Exemption(f"x{n}", created_ms, PENDING, subject, subject, "approved-models", "openai", "gpt-4o",
                     "platform", None, created_ms - 1000, "need it for the demo")


def test_insert_events_counts_only_new_rows(store: Store) -> None:
    batch = [event(i) for i in range(5)]
    assert store.insert_events(batch) == 5
    assert store.insert_events(batch) == 0  # agent telemetry re-sent: nothing doubles
    assert store.insert_events([event(4), event(5), event(5)]) == 1
    assert [e["id"] for e in store.list_events(10)] == [f"e{i:06d}" for i in (5, 4, 3, 2, 1, 0)]
    assert store.insert_events([]) == 0


def test_documents_are_versioned_per_kind(store: Store) -> None:
    assert store.latest_document("policy") is None and store.latest_versions() == {}
    first = store.add_document("policy", T0, "admin", "api", {"rules": [{"id": "r1"}]}, note="initial")
    assert (first.version, first.note, first.body) == (1, "initial", {"rules": [{"id": "r1"}]})
    for i in range(2, 6):
        assert store.add_document("policy", T0 + i, "admin", "api", {"rules": [], "n": i}).version == i
    assert store.add_document("directory", T0, "sync", "file", {"org": "acme"}).version == 1
    latest = store.latest_document("policy")
    assert latest is not None and latest.version == 5 and latest.body == {"rules": [], "n": 5}
    assert store.document("policy", 1) == first and store.document("policy", 9) is None
    assert [d.version for d in store.document_history("policy", 3)] == [5, 4, 3]
    assert [d.version for d in store.document_history("policy", 3, before_version=3)] == [2, 1]
    assert store.document_history("agent_policy", 3) == []
    assert store.latest_versions() == {"policy": 5, "directory": 1}
    out = first.json()
    assert out["version"] == 1 and out["ts"] == "2026-01-01T00:00:00.000Z" and out["body"]["rules"][0]["id"] == "r1"


def test_concurrent_writers_get_distinct_versions(store_url: str, tmp_path: Path) -> None:
    stores = [open_store(store_url, tmp_path) for _ in range(4)]  # as four gateways sharing one database

    def write(s: Store) -> None:
        for _ in range(10):
            s.add_document("policy", T0, "admin", "api", {})

    threads = [threading.Thread(target=write, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [d.version for d in stores[0].document_history("policy", 100)] == list(range(40, 0, -1))
    for s in stores:
        s.close()


def test_exemptions_are_listed_decided_once_and_overrides_expire(store: Store) -> None:
    for n in range(4):
        store.add_exemption(exemption(n, T0 + n * 1000))
    assert store.exemption("x2") == exemption(2, T0 + 2000) and store.exemption("nope") is None
    assert [x.id for x in store.list_exemptions(None, 10)] == ["x3", "x2", "x1", "x0"]
    assert [x.id for x in store.list_exemptions(PENDING, 2)] == ["x3", "x2"]

    approved = store.decide_exemption("x0", APPROVED, "carol", T0 + 5000, OVERRIDE, T0 + 60_000, "one week")
    assert approved is not None and approved.status == APPROVED and approved.reviewer == "carol"
    assert approved.expires_ms == T0 + 60_000 and approved.note == "one week" and approved.decision_kind == OVERRIDE
    assert store.decide_exemption("x0", DENIED, "dave", T0 + 6000, None, None, None) is None  # not pending any more
    assert store.decide_exemption("missing", APPROVED, "dave", T0, OVERRIDE, T0, None) is None
    with pytest.raises(ValueError, match="approved or denied"):
        store.decide_exemption("x1", PENDING, "dave", T0, None, None, None)
    store.decide_exemption("x1", APPROVED, "carol", T0 + 5000, RULE_EDIT, None, "rule changed")
    store.decide_exemption("x2", DENIED, "carol", T0 + 5000, None, None, "no")
    store.decide_exemption("x3", APPROVED, "carol", T0 + 5000, OVERRIDE, T0 + 10_000, None)

    assert [x.id for x in store.list_exemptions(APPROVED, 10)] == ["x3", "x1", "x0"]
    assert [x.id for x in store.list_exemptions(PENDING, 10)] == []
    assert [x.id for x in store.active_overrides(T0 + 9_999)] == ["x0", "x3"]
    assert [x.id for x in store.active_overrides(T0 + 10_000)] == ["x0"]
    assert store.active_overrides(T0 + 60_000) == []
    out = approved.json()
    assert out["id"] == "x0" and out["status"] == "approved" and out["expires"] == "2026-01-01T00:01:00.000Z"


def test_enrollment_tokens_mirror_gateway_keys(store: Store) -> None:
    token = store.add_enrollment_token("h1", "the-abc", "laptops")
    store.add_enrollment_token("h2", "the-def", None)
    assert store.find_enrollment_token("h1") == token and store.find_enrollment_token("zz") is None
    assert [t.prefix for t in store.list_enrollment_tokens()] == ["the-abc", "the-def"]
    assert store.revoke_enrollment_token("the-abc") == 1 and store.revoke_enrollment_token("the-abc") == 0
    revoked = store.find_enrollment_token("h1")
    assert revoked is not None and revoked.revoked_ms is not None and not revoked.json()["active"]
    assert "token_hash" not in token.json()
    key = store.add_key("k1", "th-abc", "alice", None)  # the same prefix in the other table is another thing
    assert store.find_key("k1") == key and store.revoke_key("th-abc") == 1
    assert store.find_enrollment_token("h2") is not None and store.list_keys()[0].revoked_ms is not None


def test_agents_check_in(store: Store) -> None:
    first = store.upsert_agent("a1", "laptop-1", "0.1.0", "the-abc", T0, {"spool": 0})
    assert (first.first_seen_ms, first.last_seen_ms, first.status) == (T0, T0, {"spool": 0})
    store.upsert_agent("a2", "laptop-2", "0.1.0", None, T0 + 10, {})
    again = store.upsert_agent("a1", "laptop-1b", "0.2.0", "the-def", T0 + 50, {"spool": 3, "policy": 2})
    assert (again.first_seen_ms, again.last_seen_ms, again.hostname, again.version, again.token_prefix) == (
        T0, T0 + 50, "laptop-1b", "0.2.0", "the-def")
    assert [a.agent_id for a in store.list_agents()] == ["a1", "a2"]
    assert store.list_agents()[0].status == {"spool": 3, "policy": 2}
    assert again.json()["last_seen"] == "2026-01-01T00:00:00.050Z"


def test_audit_checkpoints(store: Store) -> None:
    assert store.last_checkpoint() is None and store.checkpoints() == []
    entries = [store.append_audit(T0 + i, "test", "admin", {"i": i}) for i in range(3)]
    store.add_checkpoint(2, T0 + 10, entries[1].hash, "k1", "sig-a")
    last = store.add_checkpoint(3, T0 + 20, entries[2].hash, "k1", "sig-b")
    assert [c.seq for c in store.checkpoints()] == [2, 3]
    assert store.last_checkpoint() == last and last.json()["hash"] == entries[2].hash
