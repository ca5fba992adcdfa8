"""The exemption id on call events (schema 7): kept by the journal (lines written before the column was added
still replay), carried on the wire only when set (a control plane older than the field takes the event); and
the exemptions' new columns in both store backends."""

from __future__ import annotations

from pathlib import Path

import orjson

from shipping import call
from test_store_control import T0, exemption
from tollhouse.agent.apply import parse_grants
from tollhouse.control.overrides import Grant
from tollhouse.events.journal import journal_line, leftover_events
from tollhouse.events.model import Capture
from tollhouse.events.records import APPROVED, OVERRIDE, REVOKED
from tollhouse.events.store import Store
from tollhouse.events.wire import from_wire, to_wire


def test_the_journal_keeps_the_exemption_id_and_reads_lines_from_before_it(tmp_path: Path) -> None:
    exempted = call(1)._replace(exemption_id="ex-1")
    old = tuple(call(2))[:-1]  # a line written before the column existed, with captured content after it
    (tmp_path / "segment-000001.jsonl").write_bytes(
        journal_line(exempted) + orjson.dumps((*old, ("prompt", "answer"))) + b"\n"
        + journal_line(call(3), Capture("p", None)))
    (left,) = leftover_events(tmp_path)
    assert [(e.id, e.exemption_id) for e in left.events] == [(call(1).id, "ex-1"), (call(2).id, None),
                                                              (call(3).id, None)]
    assert left.captures == {call(2).id: Capture("prompt", "answer"), call(3).id: Capture("p", None)}


def test_the_wire_carries_the_exemption_id_only_when_set() -> None:
    assert "exemption_id" not in to_wire(call(1))
    sent = to_wire(call(1)._replace(exemption_id="ex-1"))
    assert sent["exemption_id"] == "ex-1"
    assert from_wire([sent]).events[0].exemption_id == "ex-1"
    assert from_wire([to_wire(call(2))]).events[0].exemption_id is None


def test_the_store_keeps_scope_revokes_once_and_notes_each_expiry_once(store: Store) -> None:
    for n in (1, 2, 3):
        store.add_exemption(exemption(n))
    assert store.decide_exemption("x1", APPROVED, "carol", T0, OVERRIDE, T0 + 1000, None, "*", "openai")
    assert store.decide_exemption("x2", APPROVED, "carol", T0, OVERRIDE, T0 + 5000, None)
    x1 = store.exemption("x1")
    assert x1 is not None and (x1.scope_models, x1.scope_providers) == ("*", "openai")
    assert x1.json()["models"] == ["*"]
    revoked = store.revoke_exemption("x2", "dave", T0 + 10)
    assert revoked is not None and (revoked.status, revoked.revoked_by, revoked.revoked_ms) == (
        REVOKED, "dave", T0 + 10)
    assert store.revoke_exemption("x2", "dave", T0 + 20) is None  # already revoked
    assert store.revoke_exemption("x3", "dave", T0 + 20) is None  # pending: nothing to revoke
    assert [x.id for x in store.active_overrides(T0 + 10)] == ["x1"]
    assert store.note_expired_overrides(T0 + 999) == []
    assert [x.id for x in store.note_expired_overrides(T0 + 1000)] == ["x1"]  # revoked x2 never "expires"
    assert store.note_expired_overrides(T0 + 2000) == []
    expired = store.exemption("x1")
    assert expired is not None and expired.expired_ms == T0 + 1000 and expired.status == APPROVED


def test_a_bundle_exemption_that_cannot_be_read_is_left_out_and_said() -> None:
    good = Grant("ex-1", "alice", "approved-models", ("gpt-4o",), ("openai",), T0)
    grants, errors = parse_grants([good.json(), {**good.json(), "models": []}, {"id": "ex-3"}, "x"])
    assert grants == [good]
    assert errors[0] == "exemption not applied: exemption 'ex-1': missing or invalid models"
    assert "subject, rule_id, models, providers, expires_ms" in errors[1] and "object" in errors[2]
    assert parse_grants({"not": "a list"}) == ([], ["the bundle's exemptions are not a list (dict); none applied"])
