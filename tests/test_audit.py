"""The audit trail: blocked calls, policy changes and counter outages, hash-chained and verifiable."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from conftest import Gateway, Mock, free_port, upstreams
from test_gateway_sdks import oai
from test_policy_gateway import ALLOWLIST, DIRECTORY


def _verify(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tollhouse", "audit", "verify", "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=60)


def _entries(gw: Gateway) -> list[dict[str, Any]]:
    status, body, _ = gw.get("/api/v1/audit")
    assert status == 200, body
    entries: list[dict[str, Any]] = json.loads(body)["entries"]
    return entries


def test_blocked_calls_and_policy_edits_are_audited_and_verifiable(mock: Mock, gateway_factory: Any,
                                                                  tmp_path: Path) -> None:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump([ALLOWLIST]))
    data = tmp_path / "data"
    gw: Gateway = gateway_factory({"identity": {"trust_user_header": True}, "providers": upstreams(mock.url),
                                   "enforcement": "on", "directory": DIRECTORY,
                                   "policy": {"rules_file": str(rules_file)}}, data)
    with pytest.raises(openai.PermissionDeniedError):
        oai(gw).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    rules_file.write_text(yaml.safe_dump([dict(ALLOWLIST, action={"type": "alert"})]))
    deadline = time.time() + 10
    while time.time() < deadline and sum(e["kind"] == "policy.changed" for e in _entries(gw)) < 2:
        time.sleep(0.1)
    entries = _entries(gw)
    kinds = [e["kind"] for e in entries]
    # the directory and the rules file are loaded as versions 1 at start; the file's edit is policy version 2
    assert kinds[:5] == ["directory.changed", "policy.changed", "gateway.started", "call.blocked", "policy.changed"]
    assert entries[1]["data"]["version"] == 1 and entries[1]["data"]["added"] == ["approved-models"]
    assert entries[1]["actor"] == "file" and entries[1]["data"]["source"] == f"file:{rules_file}"
    entries = entries[2:]
    blocked = entries[1]["data"]
    assert blocked["rule_id"] == "approved-models" and blocked["subject"] == "alice"
    assert blocked["project"] == "checkout" and blocked["model"] == "gpt-4o" and blocked["status"] == 403
    assert entries[2]["data"]["changed"] == ["approved-models"] and entries[2]["data"]["version"] == 2
    assert entries[2]["data"]["changes"] == [  # what changed in the rule, before → after
        {"op": "removed", "path": "rules[approved-models].action.message", "id": "approved-models",
         "before": "See infosec/approved-models.md"},
        {"op": "changed", "path": "rules[approved-models].action.type", "id": "approved-models",
         "before": "hard_stop", "after": "alert"}]
    entries = _entries(gw)
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    assert all(e["prev_hash"] == p["hash"] for p, e in pairwise(entries))
    gw.stop()
    ok = _verify(data)
    assert ok.returncode == 0 and f"{len(entries)} entries" in ok.stdout


def _audited(tmp_path: Path, mock: Mock, n_blocked: int = 3) -> Path:
    data = tmp_path / "data"
    gw = Gateway({"identity": {"trust_user_header": True}, "providers": upstreams(mock.url), "enforcement": "on",
                  "directory": DIRECTORY, "policy": {"rules": [ALLOWLIST]}}, data).start()
    for _ in range(n_blocked):
        with pytest.raises(openai.PermissionDeniedError):
            oai(gw).chat.completions.create(model="o1", messages=[{"role": "user", "content": "x"}])
    gw.stop()
    return data


@pytest.mark.parametrize(("tamper", "expected"), [
    ("UPDATE audit SET data = replace(data, 'alice', 'mallory') WHERE seq = 4", "entry #4 (call.blocked): content"),
    ("DELETE FROM audit WHERE seq = 2", "entry #2 is missing"),
    ("DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)",  # the tail: only the checkpoints show it
     "were removed: checkpoint signed at "),
    ("UPDATE audit SET seq = seq + 100 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = 4;"
     "UPDATE audit SET seq = 4 WHERE seq = 103", "entry #3: prev_hash"),
    ("INSERT INTO audit SELECT (SELECT MAX(seq) FROM audit) + 1, ts_ms, kind, actor, data, prev_hash, hash "
     "FROM audit WHERE seq = 4", "prev_hash"),
])
def test_audit_verify_names_the_first_tampered_entry(mock: Mock, tmp_path: Path, tamper: str,
                                                     expected: str | None) -> None:
    data = _audited(tmp_path, mock)
    assert _verify(data).returncode == 0
    db = sqlite3.connect(data / "tollhouse.db")
    db.executescript(tamper)
    db.commit()
    result = _verify(data)
    assert result.returncode == 1 and "TAMPERED" in result.stderr and "Traceback" not in result.stderr
    if expected is not None:
        assert expected in result.stderr


def test_counter_outage_is_audited(mock: Mock, gateway_factory: Any, tmp_path: Path) -> None:
    rule = {"id": "dollar", "scope": "individual", "condition": {"type": "budget", "threshold": 1},
            "action": {"type": "hard_stop"}}
    gw: Gateway = gateway_factory({"identity": {"trust_user_header": True}, "providers": upstreams(mock.url),
                                   "enforcement": "on", "directory": DIRECTORY, "policy": {"rules": [rule]},
                                   "counters": {"url": f"redis://127.0.0.1:{free_port()}/0"}})
    with pytest.raises(openai.APIStatusError) as exc:
        oai(gw).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 503
    kinds = {e["kind"]: e["data"] for e in _entries(gw)}
    assert kinds["ledger.unavailable"]["failed"] == "closed" and kinds["ledger.unavailable"]["rules"] == ["dollar"]
    assert kinds["call.blocked"]["status"] == 503 and "counters unavailable" in kinds["call.blocked"]["reason"]


def test_audit_export_for_a_siem(mock: Mock, tmp_path: Path) -> None:
    data = _audited(tmp_path, mock, n_blocked=2)

    def export(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tollhouse", "audit", "export", "--data-dir", str(data),
                               *args], capture_output=True, text=True, timeout=60)

    lines = export().stdout.splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["kind"] for e in entries] == ["directory.changed", "policy.changed", "gateway.started",
                                            "call.blocked", "call.blocked"]
    assert entries[3]["data"]["rule_id"] == "approved-models" and entries[4]["prev_hash"] == entries[3]["hash"]
    assert [json.loads(line)["seq"] for line in export("--since", "4").stdout.splitlines()] == [5]
    cef = export("--format", "cef").stdout.splitlines()
    assert len(cef) == 5 and all(line.startswith("CEF:0|Tollhouse|Tollhouse|") for line in cef)
    assert "|call.blocked|call.blocked|6|" in cef[3] and "cs1Label=rule cs1=approved-models" in cef[3]
    assert "suser=alice" in cef[3] and "cs2=o1" in cef[3]
    bad = export("--format", "xml")
    assert bad.returncode == 1 and "jsonl or cef" in bad.stderr


def test_switching_enforcement_between_runs_is_audited(mock: Mock, tmp_path: Path) -> None:
    data = tmp_path / "data"
    base = {"identity": {"trust_user_header": True}, "providers": upstreams(mock.url), "directory": DIRECTORY,
            "policy": {"rules": [ALLOWLIST]}}
    for enforcement in ("off", "off", "on"):
        Gateway({**base, "enforcement": enforcement}, data).start().stop()
    gw = Gateway({**base, "enforcement": "on", "policy": {**base["policy"], "enforce_teams": []}}, data).start()
    try:
        switches = [e for e in _entries(gw) if e["kind"] == "enforcement.changed"]
    finally:
        gw.stop()
    assert len(switches) == 1  # off → off is no switch; on → on neither
    assert switches[0]["data"]["before"]["enforcement"] == "off" and switches[0]["data"]["after"]["enforcement"] == "on"
    assert switches[0]["data"]["changed"] == ["enforcement"] and switches[0]["actor"] == "config"
