"""The worked cases of the README's precedence table, row by row."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tollhouse.config import DirectoryConfig
from tollhouse.directory import Directory
from tollhouse.policy.engine import CallFacts, CompiledPolicy
from tollhouse.policy.rules import parse_rules

DIRECTORY = Directory(DirectoryConfig.model_validate({
    "teams": [{"id": "engineering"}, {"id": "platform", "parent": "engineering"}, {"id": "research"}],
    "projects": [{"id": "checkout", "team": "platform", "cost_centre": "CC-200"}],
    "people": [{"id": "alice", "team": "platform"}, {"id": "bob", "team": "platform"},
               {"id": "rita", "team": "research"}],
}))
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def allow(rid: str, models: list[str], **kw: Any) -> dict[str, Any]:
    return {"id": rid, "condition": {"type": "MODEL_ALLOWLIST", "models": models}, "severity": "BLOCK", **kw}


def deny(rid: str, models: list[str], severity: str = "BLOCK", **kw: Any) -> dict[str, Any]:
    return {"id": rid, "condition": {"type": "MODEL_DENYLIST", "models": models}, "severity": severity, **kw}


ORG_AND_BOB = [allow("org", ["gpt-4o-mini"], scope="org"), allow("bob", ["o1"], scope="individual", subject="bob")]
ORG_AND_TEAM_DENY = [allow("org", ["gpt-4o-mini", "gpt-4o"], scope="org"),
                     deny("team", ["gpt-4o"], scope="team", team="platform")]
TWO_TEAMS = [deny("eng", ["o1"], scope="team", team="engineering"),
             deny("plat", ["gpt-4o"], scope="team", team="platform")]
REDIRECT = [{"id": "no-opus", "scope": "org", "condition": {"type": "model", "operator": "in", "models": ["opus"]},
             "action": {"type": "redirect", "model": "sonnet"}}, allow("org", ["sonnet"], scope="org")]
SOFT_OVER_INFO = [{"id": "team-soft", "scope": "team", "team": "platform",
                   "condition": {"type": "MODEL_DENYLIST", "models": ["gpt-4o"]}, "action": {"type": "soft_cap"}},
                  deny("org-info", ["gpt-4o"], severity="INFO", scope="org")]
CC = [{"id": "cc", "scope": "org", "condition": {"type": "COST_CENTRE_REQUIRED"}, "severity": "BLOCK"}]


@pytest.mark.parametrize(("rules", "user", "project", "model", "action", "rule_id"), [
    (ORG_AND_BOB, "bob", None, "o1", "allow", None),
    (ORG_AND_BOB, "bob", None, "gpt-4o-mini", "block", "bob"),
    (ORG_AND_BOB, "alice", None, "o1", "block", "org"),
    (ORG_AND_TEAM_DENY, "alice", None, "gpt-4o", "block", "team"),
    (ORG_AND_TEAM_DENY, "alice", None, "o1", "block", "org"),
    (TWO_TEAMS, "alice", None, "o1", "allow", None),
    (REDIRECT, "alice", None, "opus", "redirect", "no-opus"),
    (SOFT_OVER_INFO, "alice", None, "gpt-4o", "warn", "team-soft"),
    (CC, "rita", None, "gpt-4o", "block", "cc"),
    (CC, "rita", "checkout", "gpt-4o", "allow", None),
])
def test_readme_precedence_row(rules: list[dict[str, Any]], user: str, project: str | None, model: str,
                               action: str, rule_id: str | None) -> None:
    policy = CompiledPolicy(parse_rules(rules))
    decision = policy.evaluate(CallFacts("openai", "api.openai.com", model), DIRECTORY.subject(user, project), NOW)
    assert (decision.action, decision.rule_id) == (action, rule_id)
    if action == "redirect":
        assert decision.model == "sonnet"
