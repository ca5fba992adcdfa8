"""`tollhouse policy explain` (issue 16): a relative rules_file is read next to the config file, whatever the
working directory; the exemptions in force are taken into account; live spend comes in through a hook."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import yaml

from conftest import ADMIN, Gateway, Mock, upstreams
from test_ledger_gateway import budget_rule
from test_policy_gateway import ALLOWLIST, DIRECTORY
from tollhouse.config import DirectoryConfig
from tollhouse.control.overrides import OverrideSet
from tollhouse.directory import Directory
from tollhouse.explain import explain_call
from tollhouse.ledger.types import CapUsage
from tollhouse.policy.decide import CountersDown
from tollhouse.policy.engine import CallFacts, Cap, CompiledPolicy
from tollhouse.policy.rules import parse_rules


def _explain(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tollhouse", "policy", "explain", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def test_explain_reads_the_rules_file_next_to_the_config_and_the_exemptions_in_force(mock: Mock,
                                                                                    tmp_path: Path) -> None:
    conf_dir, elsewhere, data = tmp_path / "etc", tmp_path / "elsewhere", tmp_path / "data"
    conf_dir.mkdir()
    elsewhere.mkdir()
    (conf_dir / "rules.yaml").write_text(yaml.safe_dump([ALLOWLIST]))
    config = {"directory": DIRECTORY, "enforcement": "on", "providers": upstreams(mock.url),
              "identity": {"trust_user_header": True}, "policy": {"rules_file": "rules.yaml"}}
    cfg = conf_dir / "tollhouse.yaml"
    cfg.write_text(yaml.safe_dump(config))
    args = ("--config", str(cfg), "--data-dir", str(data), "--user", "alice")
    before = _explain(elsewhere, *args, "--model", "gpt-4o")
    assert before.returncode == 0, before.stderr
    assert "decision: BLOCK by rule approved-models" in before.stdout
    assert "no store at" in before.stdout and not data.exists()  # nothing created by explaining

    gw = Gateway({**config, "policy": {"rules_file": str(conf_dir / "rules.yaml")}}, data).start()
    try:
        status, body, _ = gw.request("POST", "/api/v1/exemptions", {
            "subject": "alice", "rule": "approved-models", "provider": "openai", "model": "gpt-4o",
            "justification": "evals"}, token=None)
        assert status == 201
        exemption_id = json.loads(body)["id"]
        assert gw.request("POST", f"/api/v1/exemptions/{exemption_id}/approve", {"hours": 2}, token=ADMIN)[0] == 200
    finally:
        gw.stop()
    covered = _explain(elsewhere, *args, "--model", "gpt-4o")
    assert covered.returncode == 0, covered.stderr
    assert "1 approved override(s) in force" in covered.stdout
    assert f"exemption {exemption_id}: rule approved-models, gpt-4o on openai" in covered.stdout
    assert "(covers this call)" in covered.stdout and "waived    approved-models" in covered.stdout
    assert f"decision: ALLOW (let through by exemption {exemption_id})" in covered.stdout
    other = _explain(elsewhere, *args, "--model", "gpt-4.5-preview")
    assert "(does not cover this call)" in other.stdout and "decision: BLOCK by rule approved-models" in other.stdout
    later = _explain(elsewhere, *args, "--model", "gpt-4o", "--at", "2099-01-01T00:00:00+00:00")
    assert "0 approved override(s)" in later.stdout and "decision: BLOCK" in later.stdout


def test_explain_judges_caps_on_the_numbers_a_usage_hook_gives() -> None:
    policy = CompiledPolicy(parse_rules([budget_rule(threshold=1)]), version=1)
    subject = Directory(DirectoryConfig.model_validate(DIRECTORY)).subject("alice", None)
    call = CallFacts("openai", "api.openai.com", "gpt-4o-mini")
    now = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)

    def spent(caps: object) -> list[CapUsage]:
        assert isinstance(caps, tuple) and all(isinstance(c, Cap) for c in caps)
        return [CapUsage(c, c.units, 1, c.units, 3600) for c in caps]  # the cap is used up

    unjudged = explain_call(policy, call, subject, now, True, OverrideSet())
    assert unjudged.verdict.outcome == "allow" and any("not judged against live spend" in x for x in unjudged.lines)
    judged = explain_call(policy, call, subject, now, True, OverrideSet(), usage=spent)
    assert judged.verdict.blocked and judged.lines[-1].startswith("decision: BLOCK by rule dollar")
    down = explain_call(policy, call, subject, now, True, OverrideSet(), usage=lambda caps: CountersDown("gone"))
    assert down.verdict.blocked and "budget_store_unavailable" in down.lines[-1]
