"""Budget thresholds (each once per cap and period, with the projection), routing of notify targets, the
outbox on both store dialects (an alert raised twice is stored once; claims; retries), config validation and
secret masking, exemption notices."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from tollhouse.alerts import outbox
from tollhouse.alerts.config import AlertsConfig
from tollhouse.alerts.evaluate import Evaluator
from tollhouse.alerts.exemption_alerts import notice
from tollhouse.alerts.model import Alert
from tollhouse.alerts.routing import Router
from tollhouse.audit.chain import AuditEntry
from tollhouse.config import ConfigError, parse_settings
from tollhouse.events.model import CallEvent
from tollhouse.events.store import Store
from tollhouse.ledger.types import CapUsage
from tollhouse.policy.compiled import MONTHLY, ScopeKind
from tollhouse.policy.decide import Outcome, Verdict
from tollhouse.policy.engine import Cap, Level
from tollhouse.policy.rules import parse_rules

SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"  # base64 of 24 bytes
CFG = AlertsConfig.model_validate({
    "channels": {"ops-slack": {"type": "slack", "url": "https://hooks.slack.com/services/T1/B2/sekrit"},
                 "mail": {"type": "email", "smtp": "smtp://u:pa55word@mail.example:587", "from": "th@acme.example"},
                 "siem": {"type": "webhook", "url": "https://siem.example/hook?token=abc", "secret": SECRET}},
    "default": ["ops-slack"], "policy_owners": ["owners@acme.example"]})
NANO = 1_000_000_000


def _cap(limit_usd: int, notify: list[str] | None = None) -> Cap:
    action = {"type": "alert", **({"notify": notify} if notify else {})}
    rule = parse_rules([{"id": "team-cap", "scope": "team", "team": "ml", "condition": {
        "type": "budget", "threshold": limit_usd}, "action": action}])[0]
    return Cap(rule, Level(1, ScopeKind.team, "ml"), ("team", "ml"), MONTHLY, None, "spend", Decimal(limit_usd))


def _event(ts: datetime, cost_usd: float) -> CallEvent:
    return CallEvent("e1", int(ts.timestamp() * 1000), "alice", "employee", "ml", None, None, "openai", "chat",
                     "/v1/chat/completions", True, "gpt-4o", "gpt-4o", False, 200, 10, 10, 0, 0,
                     int(cost_usd * NANO), "response", "allow", None, None, 1.0, 1.0, False, None)


def test_budget_thresholds_fire_once_per_cap_and_period_with_the_projection() -> None:
    ev = Evaluator(CFG, Router(CFG), "http://gw/console/", 1, ZoneInfo("UTC"))
    cap = _cap(1000)
    ts = datetime(2026, 12, 11, tzinfo=UTC)  # 10 days into a 31-day month

    def offer(used_usd: float, cost: float) -> list[str]:
        usage = CapUsage(cap, int(used_usd * NANO), int(cost * NANO), 1000 * NANO, 0)
        verdict = Verdict(Outcome.allow, True, usage=(usage,))
        return [r.alert.title for r in ev.evaluate([(_event(ts, cost), verdict)])[0]]

    assert offer(100, 1) == []
    assert offer(499, 2) == ["Budget team-cap: team ml at 50% of its $1,000 cap"]
    assert offer(510, 2) == []  # 50 % again: once per period
    raised, _ = ev.evaluate([(_event(ts, 5), Verdict(Outcome.allow, True, usage=(
        CapUsage(cap, 990 * NANO, 5 * NANO, 1000 * NANO, 0),)))])  # 80 % was skipped: only the highest is sent
    assert [r.alert.key.rsplit(":", 1)[1] for r in raised] == ["0.8"]
    text = raised[0].alert.text
    assert "team ml has used $995.00 of its $1,000 monthly cap" in text
    assert ("(99%, past the 80% threshold). At this pace it reaches $3,084 by the end of the month (308% of the "
            "cap)") in text
    assert raised[0].targets == (("ops-slack", ""),)  # no notify on the rule: the defaults
    assert offer(1000, 1)[0].startswith("Budget team-cap: team ml at 100%")
    # Next month the thresholds fire again.
    ts = datetime(2027, 1, 2, tzinfo=UTC)
    assert offer(600, 1) == ["Budget team-cap: team ml at 60% of its $1,000 cap"]


def test_notify_targets_channels_addresses_and_fallback() -> None:
    r = Router(CFG)
    assert r.targets(["siem", "eng-leads@company.com", "siem"]) == (("siem", ""), ("mail", "eng-leads@company.com"))
    assert r.targets(["no-such-channel"]) == (("ops-slack", ""),)  # a typo is not a lost alert
    assert r.targets([]) == (("ops-slack", ""),)


def test_config_masks_secrets_and_names_problems() -> None:
    shown = str(CFG.describe()) + repr(CFG) + str(CFG.model_dump())
    for secret in ("sekrit", "pa55word", "token=abc", SECRET):
        assert secret not in shown
    assert CFG.describe() == {"ops-slack": "slack https://hooks.slack.com/****",
                              "mail": "email smtp://u:****@mail.example:587 (starttls) from th@acme.example",
                              "siem": "webhook https://siem.example/**** (signed)"}
    with pytest.raises(ConfigError, match=r"alerts.default: 'nope' is not a channel in alerts.channels \(ops\)"):
        parse_settings({"alerts": {"channels": {"ops": {"type": "slack", "url": "https://h.example/x"}},
                                   "default": ["nope"]}}, "(test)")
    with pytest.raises(ConfigError, match="secret must be whsec_"):
        parse_settings({"alerts": {"channels": {"h": {"type": "webhook", "url": "https://h.example/x",
                                                      "secret": "plain"}}}}, "(test)")
    with pytest.raises(ConfigError, match="smtp must look like smtp://user:password@host:587"):
        parse_settings({"alerts": {"channels": {"m": {"type": "email", "smtp": "mail.example", "from": "a@b.c"}}}},
                       "(test)")


def test_outbox_stores_an_alert_once_and_claims_and_retries(store: Store) -> None:
    alert = Alert("rule:r:alice:0", "rule", "warning", "Rule r fired for alice", "text", (("Rule", "r"),),
                  closes_ms=5_000)
    targets = (("ops-slack", ""), ("mail", "a@acme.example"))
    assert outbox.add_fired(store, alert, targets, 1_000, 1) is True
    assert outbox.add_fired(store, alert, targets, 1_500, 9) is False  # a second gateway, or a later tick
    due = outbox.claim_due(store, 2_000, lease_ms=10_000)
    assert sorted((d.channel, d.target) for d in due) == sorted(targets) and due[0].alert.count == 10
    assert outbox.claim_due(store, 2_000, lease_ms=10_000) == []  # claimed: nobody else sends them meanwhile
    slack = next(d for d in due if d.channel == "ops-slack")
    mail = next(d for d in due if d.channel == "mail")
    outbox.mark_delivered(store, slack, 2_100)
    outbox.mark_failed(store, mail, 3_000, "SMTP down")
    assert [d.channel for d in outbox.claim_due(store, 2_999, lease_ms=10_000)] == []
    again = outbox.claim_due(store, 3_000, lease_ms=10_000)
    assert [(d.channel, d.attempts) for d in again] == [("mail", 1)]
    outbox.mark_delivered(store, again[0], 3_100)
    assert outbox.pending_by_channel(store) == {}
    assert outbox.closing(store, 4_999) == []
    closed = outbox.closing(store, 5_000)
    assert [(c.id, c.count) for c in closed] == [(alert.id, 10)] and outbox.closing(store, 6_000) == []
    [shown] = outbox.list_alerts(store, 10)
    assert shown["state"] == "delivered" and shown["count"] == 10
    assert {d["channel"]: d["attempts"] for d in shown["deliveries"]} == {"ops-slack": 1, "mail": 2}
    waiting = Alert("budget:x", "budget", "info", "t", "x")
    assert outbox.add_alert(store, waiting, (("ops-slack", ""),), 1_200)
    assert outbox.prune(store, 1_000) == 0  # nothing that old
    assert outbox.prune(store, 10_000) == 1  # the delivered one; the one still waiting is kept
    assert [a["id"] for a in outbox.list_alerts(store, 10)] == [waiting.id]


def test_exemption_notices_go_to_owners_and_to_the_requester() -> None:
    filed = AuditEntry(1, 0, "exemption.requested", "alice", {
        "id": "ex-1", "subject": "alice", "rule_id": "no-gpt4o", "model": "gpt-4o", "justification": "eval run",
        "requester": "alice"}, "", "")
    n = notice(filed, None, {}, "http://gw/console/")
    assert n is not None and n.to_owners and "alice asks to be let past rule no-gpt4o" in n.alert.text
    assert n.alert.links == (("Review", "http://gw/console/exemptions/ex-1"),)
    decided = AuditEntry(2, 0, "exemption.approved", "pat", {"id": "ex-1", "rule_id": "no-gpt4o",
                                                             "expires": "2026-12-08T00:00:00Z"}, "", "")
    n = notice(decided, "alice", {"alice": "alice@acme.example"}, "http://gw/console/")
    assert n is not None and not n.to_owners and n.requester_email == "alice@acme.example"
    assert "was approved by pat until 2026-12-08" in n.alert.text
    assert notice(decided, "alice", {}, "http://gw/console/") is None  # no address known: nobody to tell


def test_a_rolling_token_cap_names_its_window() -> None:
    rule = parse_rules([{"id": "burst", "scope": "team", "team": "ml", "condition": {
        "type": "usage", "metric": "tokens", "threshold": 1000, "window": "1h"}, "action": {"type": "alert"}}])[0]
    cap = Cap(rule, Level(1, ScopeKind.team, "ml"), ("team", "ml"), rule.count_window, None, "tokens", Decimal(1000))
    ev = Evaluator(CFG, Router(CFG), "http://gw/console/", 1, ZoneInfo("UTC"))
    verdict = Verdict(Outcome.allow, True, usage=(CapUsage(cap, 880, 20, 1000, 0),))
    [raised], _ = ev.evaluate([(_event(datetime(2026, 12, 11, 10, 30, tzinfo=UTC), 0), verdict)])
    assert raised.alert.text.startswith("team ml has used 900 tokens of its 1,000 tokens 1h rolling cap in rule burst")
    assert "At this pace" not in raised.alert.text  # projections are for monthly caps
