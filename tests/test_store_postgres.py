"""Gateways on a PostgreSQL store: calls recorded, spend and audit served from it, the CLI reading it,
and two gateways appending to one audit chain at once."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import yaml

from conftest import Gateway, Mock, free_port
from test_audit import _entries
from test_ledger_gateway import _call, _config, _together, budget_rule
from test_operations import _cli
from tollhouse.audit.chain import first_problem
from tollhouse.events.store import open_store

DENY = {"id": "no-budget-model", "scope": "org", "action": {"type": "hard_stop"},
        "condition": {"type": "model", "operator": "in", "models": ["budget-model"]}}


def _config_file(tmp_path: Path, url: str, **extra: Any) -> str:
    path = tmp_path / "store.yaml"
    path.write_text(yaml.safe_dump({"store": {"url": url}, **extra}))
    return str(path)


def test_a_gateway_on_postgres_records_meters_audits_and_restarts(mock: Mock, postgres_url: str,
                                                                  tmp_path: Path) -> None:
    config = _config(mock, [budget_rule(0.30)], store={"url": postgres_url})
    gw = Gateway(config, tmp_path / "gw").start()
    assert [_call(gw.url) for _ in range(4)] == [200, 200, 200, 403]
    events = gw.events()
    assert [e["decision"] for e in events] == ["block", "allow", "allow", "allow"]
    assert events[0]["rule_id"] == "dollar" and events[1]["stream"] is False and events[1]["cost_usd"] == 0.1
    status, body, _ = gw.get("/api/v1/spend?scope=person&id=alice&window=month")
    report = json.loads(body)
    assert status == 200 and report["requests"] == 3 and abs(report["spend_usd"] - 0.30) < 1e-9
    entries = _entries(gw)  # the directory and the policy are versioned documents in the store
    assert [e["kind"] for e in entries] == ["directory.changed", "policy.changed", "gateway.started", "call.blocked"]
    assert all(e["prev_hash"] == p["hash"] for p, e in pairwise(entries))
    assert entries[3]["data"]["rule_id"] == "dollar"
    gw.stop()

    again = Gateway(config, tmp_path / "gw").start()  # counters rebuilt from PostgreSQL: still over budget
    assert _call(again.url) == 403 and _call(again.url, "bob") == 200
    entries = _entries(again)
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    assert [e["kind"] for e in entries[-2:]] == ["gateway.started", "call.blocked"]
    again.stop()

    cfg = _config_file(tmp_path, postgres_url)  # the store from --config; the checkpoint key from --data-dir
    verify = _cli("audit", "verify", "--config", cfg, "--data-dir", str(tmp_path / "gw"))
    assert verify.returncode == 0 and f"{len(entries)} entries, chain intact" in verify.stdout, verify.stderr
    exported = [json.loads(line) for line in _cli("audit", "export", "--config", cfg).stdout.splitlines()]
    assert [e["seq"] for e in exported] == [e["seq"] for e in entries]
    assert _cli("keys", "create", "--user", "alice", "--config", cfg).stdout.startswith("th-")
    assert "alice" in _cli("keys", "list", "--config", cfg).stdout


def test_the_cli_names_an_unreachable_postgres_without_its_password(tmp_path: Path) -> None:
    port = free_port()
    result = _cli("audit", "verify", "--config", _config_file(tmp_path, f"postgresql://th:pw-XyZ@127.0.0.1:{port}/th"))
    assert result.returncode == 2 and f"127.0.0.1:{port}" in result.stderr
    assert "pw-XyZ" not in result.stderr and "Traceback" not in result.stderr


def test_two_gateways_sharing_postgres_keep_one_audit_chain(mock: Mock, postgres_url: str, tmp_path: Path) -> None:
    key = tmp_path / "secrets" / "audit.pem"  # gateways sharing a store share one signing key (a mounted secret)
    key.parent.mkdir()
    config = _config(mock, [DENY], store={"url": postgres_url}, audit={"signing_key_file": str(key)})
    gateways = [Gateway(config, tmp_path / f"gw{n}").start() for n in range(2)]
    statuses = _together(40, lambda i: _call(gateways[i % 2].url, ("alice", "bob")[i // 2 % 2]))
    assert statuses == [403] * 40
    for gw in gateways:
        gw.stop()  # flushes each gateway's events and audit appends
    store = open_store(postgres_url, tmp_path)
    entries = store.audit_entries()
    assert first_problem(entries) is None
    kinds = [e.kind for e in entries]
    assert kinds.count("gateway.started") == 2 and kinds.count("call.blocked") == 40
    assert len(store.list_events(100)) == 40
    store.close()
    cfg = _config_file(tmp_path, postgres_url, audit={"signing_key_file": str(key)})
    verify = _cli("audit", "verify", "--config", cfg)
    assert verify.returncode == 0 and f"{len(entries)} entries, chain intact" in verify.stdout, verify.stderr
