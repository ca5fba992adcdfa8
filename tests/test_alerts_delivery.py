"""Alerts reach real receivers the tests start: Slack (an HTTP server), a signed webhook (signature verified with
the secret), email (aiosmtpd with STARTTLS and AUTH). Deduplicated with counts; every alert arrives exactly once,
even when a receiver was down for a while; secrets never shown."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import raw_http
from alert_receivers import HttpReceiver, SmtpReceiver, messages, new_secret, wait_until
from conftest import Gateway, Mock, upstreams
from test_gateway_sdks import oai
from test_policy_gateway import DIRECTORY
from tollhouse.events.model import CallEvent
from tollhouse.events.store import open_store

WARN_RULE = {"id": "no-gpt4o", "scope": "org",
             "condition": {"type": "model", "operator": "in", "models": ["gpt-4o"]},
             "action": {"type": "alert", "message": "Use gpt-4o-mini", "notify": ["ops-slack", "siem",
                                                                                  "eng-leads@company.com"]},
             "enabled": True}


def _config(mock: Mock, slack: HttpReceiver, hook: HttpReceiver, smtp: SmtpReceiver, **alerts: Any
            ) -> dict[str, Any]:
    return {
        "identity": {"trust_user_header": True}, "providers": upstreams(mock.url), "directory": DIRECTORY,
        "policy": {"rules": [WARN_RULE]},
        "alerts": {"channels": {
            "ops-slack": {"type": "slack", "url": slack.url},
            "siem": {"type": "webhook", "url": hook.url, "secret": hook.secret},
            "mail": {"type": "email", "smtp": smtp.url, "from": "tollhouse@acme.example", "ca_file": str(smtp.cert)},
        }, "default": ["ops-slack"], "retry_min_s": 0.05, "retry_max_s": 0.2, "failing_after": 2, **alerts},
    }


def _call(gw: Gateway, user: str = "alice", model: str = "gpt-4o") -> None:
    oai(gw, user).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])


def _alerts(gw: Gateway, kind: str | None = None) -> list[dict[str, Any]]:
    status, body, _ = gw.get("/api/v1/alerts" + (f"?kind={kind}" if kind else ""))
    assert status == 200, body
    alerts: list[dict[str, Any]] = json.loads(body)["alerts"]
    return alerts


def test_a_busy_loop_sends_one_message_per_channel_with_its_count(mock: Mock, gateway_factory: Any,
                                                                  tmp_path: Path) -> None:
    slack, hook, smtp = HttpReceiver().start(), HttpReceiver(new_secret()).start(), SmtpReceiver(tmp_path).start()
    try:
        gw: Gateway = gateway_factory(_config(mock, slack, hook, smtp, dedup_window_s=3600))
        for _ in range(40):
            _call(gw)
        _call(gw, model="gpt-4o-mini")  # no rule: no alert
        slack.log.wait_for(lambda items: len(items) >= 1)
        hook.log.wait_for(lambda items: len(items) >= 1)
        smtp.log.wait_for(lambda items: len(items) >= 1)
        wait_until(lambda: sum(a["count"] for a in _alerts(gw, "rule")) == 40, what="40 firings counted")
        rule_alerts = _alerts(gw, "rule")
        assert 1 <= len(rule_alerts) <= 2  # one per hour window (two only if the loop crossed an hour)
        wait_until(lambda: all(a["state"] == "delivered" for a in _alerts(gw, "rule")), what="delivered")
        ids = {a["id"] for a in rule_alerts}
        # Each alert once per channel: Slack, the webhook (webhook-id is the idempotency key), the email.
        assert sorted(h["webhook-id"].split(".")[0] for h, _ in hook.log.items) == sorted(ids)
        assert len({h["webhook-id"] for h, _ in hook.log.items}) == len(hook.log.items)
        assert hook.rejected == 0  # every signature verified with the secret
        assert len(slack.log.items) == len(ids) and len(smtp.log.items) == len(ids)
        # What Slack shows: the rule, the subject, the team, the model, the cost, links.
        text = json.dumps(slack.log.items[0][1])
        for part in ("no-gpt4o", "alice", "platform", "gpt-4o", "Use gpt-4o-mini", "Cost", "/console/policy"):
            assert part in text, part
        body = hook.log.items[0][1]
        assert body["type"] == "tollhouse.alert.rule" and body["data"]["fields"]["Subject"] == "alice"
        rcpts, msg = smtp.log.items[0]
        assert rcpts == ["eng-leads@company.com"] and "no-gpt4o" in msg["Subject"]
        assert msg["Message-ID"].startswith("<al_") and smtp.logins  # authenticated, after STARTTLS
        # Secrets are masked wherever the API shows channels and deliveries.
        _, raw, _ = gw.get("/api/v1/alerts")
        shown = raw.decode()
        for secret in ("secretpath", hook.secret or "", SmtpReceiver.PASSWORD):
            assert secret not in shown
        assert "ops-slack" in shown and "/****" in shown
    finally:
        slack.stop()
        hook.stop()
        smtp.stop()


def test_the_count_follows_when_the_window_closes(mock: Mock, gateway_factory: Any, tmp_path: Path) -> None:
    slack, hook, smtp = HttpReceiver().start(), HttpReceiver(new_secret()).start(), SmtpReceiver(tmp_path).start()
    try:
        rule = dict(WARN_RULE, action={"type": "alert", "notify": ["ops-slack"]})
        cfg = _config(mock, slack, hook, smtp, dedup_window_s=2)
        cfg["policy"] = {"rules": [rule]}
        gw: Gateway = gateway_factory(cfg)
        for _ in range(5):
            _call(gw, "bob")
        wait_until(lambda: sum(a["count"] for a in _alerts(gw, "rule")) == 5, what="5 firings counted")
        wait_until(lambda: len(_alerts(gw, "rule.summary")) == sum(a["count"] > 1 for a in _alerts(gw, "rule"))
                   and all(a["state"] == "delivered" for a in _alerts(gw)), what="summaries delivered")
        rules, summaries = _alerts(gw, "rule"), _alerts(gw, "rule.summary")
        assert summaries  # 5 calls in at most two 2-second windows: one of them fired more than once
        assert sorted(a["count"] for a in summaries) == sorted(a["count"] for a in rules if a["count"] > 1)
        assert "fired" in summaries[0]["text"] and "one message was sent for all of them" in summaries[0]["text"]
        assert len(slack.log.items) == len(rules) + len(summaries)  # one message each, no more
    finally:
        slack.stop()
        hook.stop()
        smtp.stop()


def test_receivers_down_for_a_while_then_up_get_every_alert_exactly_once(mock: Mock, gateway_factory: Any,
                                                                        tmp_path: Path) -> None:
    slack, hook, smtp = HttpReceiver(), HttpReceiver(new_secret()), SmtpReceiver(tmp_path)  # not started: down
    gw: Gateway = gateway_factory(_config(mock, slack, hook, smtp, dedup_window_s=3600))
    people = ["alice", "bob", "rita"]
    for who in people:
        _call(gw, who)
    # While they are down, the alerts wait in the outbox and the channels show failing in /healthz.
    wait_until(lambda: _health(gw)["channels"]["ops-slack"]["state"] == "failing" and len(_alerts(gw, "rule")) == 3,
               what="slack failing, three alerts stored")
    health = _health(gw)
    assert health["status"] == "failing" and health["channels"]["siem"]["state"] == "failing"
    assert "secretpath" not in json.dumps(health)
    status, page, _ = gw.get("/console/")
    assert status == 200 and b"Alert channels failing" in page and b"ops-slack" in page and b"secretpath" not in page
    pending = _alerts(gw, "rule")
    assert len(pending) == 3 and all(a["state"] == "pending" for a in pending)
    tried = [d for a in pending for d in a["deliveries"] if d["channel"] == "ops-slack" and d["attempts"]]
    assert tried and all("Cannot connect" in d["last_error"] for d in tried)  # the rest wait for the channel
    slack.start()
    hook.start()
    smtp.start()
    try:
        slack.log.wait_for(lambda items: len(items) >= 3)
        hook.log.wait_for(lambda items: len(items) >= 3)
        smtp.log.wait_for(lambda items: len(items) >= 3)
        wait_until(lambda: all(a["state"] == "delivered" for a in _alerts(gw, "rule")), what="delivered")
        assert _health(gw)["channels"]["ops-slack"]["state"] == "ok"
        subjects = Counter(i[1]["data"]["fields"]["Subject"] for i in hook.log.items)
        assert subjects == Counter(people)  # exactly once each
        assert len(slack.log.items) == 3 and len(messages(smtp.log)) == 3 and hook.rejected == 0
    finally:
        slack.stop()
        hook.stop()
        smtp.stop()


def _health(gw: Gateway) -> dict[str, Any]:
    _, body, _ = gw.get("/healthz", token=None)
    section: dict[str, Any] = json.loads(body)["alerts"]
    return section


def test_exemption_requests_reach_policy_owners_and_decisions_the_requester(mock: Mock, gateway_factory: Any,
                                                                           tmp_path: Path) -> None:
    slack, hook, smtp = HttpReceiver().start(), HttpReceiver(new_secret()).start(), SmtpReceiver(tmp_path).start()
    try:
        cfg = _config(mock, slack, hook, smtp, policy_owners=["ops-slack", "ai-policy@acme.example"])
        listed: list[dict[str, Any]] = DIRECTORY["people"]  # type: ignore[assignment]
        people = [dict(p, email="alice@acme.example") if p["id"] == "alice" else p for p in listed]
        cfg["directory"] = dict(DIRECTORY, people=people)
        gw: Gateway = gateway_factory(cfg)
        status, body, _ = gw.request("POST", "/api/v1/exemptions", {
            "subject": "alice", "rule": "no-gpt4o", "justification": "benchmarking gpt-4o"}, token=None)
        assert status == 201, body
        exemption_id = json.loads(body)["id"]
        slack.log.wait_for(lambda items: len(items) >= 1)
        rcpts, msg = smtp.log.wait_for(lambda items: len(items) >= 1)[0]
        assert rcpts == ["ai-policy@acme.example"] and exemption_id in msg["Subject"]
        assert "benchmarking gpt-4o" in json.dumps(slack.log.items[0][1])
        status, body, _ = gw.request("POST", f"/api/v1/exemptions/{exemption_id}/deny", {"reason": "use the mini"})
        assert status == 200, body
        items = smtp.log.wait_for(lambda items: len(items) >= 2)
        rcpts, msg = items[1]
        assert rcpts == ["alice@acme.example"] and "denied" in msg["Subject"]
        assert "use the mini" in msg.get_payload()
        wait_until(lambda: len(_alerts(gw)) == 2 and all(a["state"] == "delivered" for a in _alerts(gw)),
                   what="both delivered")
        assert len(slack.log.items) == 1  # the decision goes to the requester only
    finally:
        slack.stop()
        hook.stop()
        smtp.stop()


def test_an_anomaly_in_the_store_reaches_the_anomaly_channel(mock: Mock, gateway_factory: Any, tmp_path: Path
                                                             ) -> None:
    data = tmp_path / "data"
    store = open_store("", data)
    now_ms = int(time.time() * 1000) - 1000
    week_ms = 7 * 24 * 3_600_000

    def spent(i: int, ts_ms: int, usd: float) -> CallEvent:
        return CallEvent(f"h{i}", ts_ms, "bob", "employee", "platform", None, None, "openai", "chat",
                         "/v1/chat/completions", True, "gpt-4o", "gpt-4o", False, 200, 10, 10, 0, 0, int(usd * 1e9),
                         "response", "allow", None, None, 1.0, 1.0, False, None)

    store.insert_events([spent(k, now_ms - k * week_ms, 70.0 + k) for k in range(1, 7)] + [spent(0, now_ms, 500.0)])
    store.close()
    slack, hook, smtp = HttpReceiver().start(), HttpReceiver(new_secret()), SmtpReceiver(tmp_path)
    try:
        cfg = _config(mock, slack, hook, smtp, anomaly={"enabled": True, "channels": ["ops-slack"], "hourly": False})
        gw: Gateway = gateway_factory(cfg, data)
        items = slack.log.wait_for(lambda items: len(items) >= 2)  # the team and the person
        texts = sorted(i[1]["blocks"][0]["text"]["text"] for i in items)
        weekday = time.strftime("%A", time.gmtime(now_ms / 1000))
        assert any(f"platform spent $500 today; its usual {weekday} is $71.00-$76.00" in t for t in texts), texts
        assert any(f"bob spent $500 today; its usual {weekday} is $71.00-$76.00" in t for t in texts), texts
        kinds = [a["kind"] for a in _alerts(gw)]
        assert kinds == ["anomaly", "anomaly"]
    finally:
        slack.stop()


def test_an_address_locked_out_for_guessing_the_admin_token_reaches_the_security_channel(
        mock: Mock, gateway_factory: Any, tmp_path: Path) -> None:
    """Read from the audit trail like exemptions: one alert per address and hour, to alerts.security."""
    slack, hook, smtp = HttpReceiver().start(), HttpReceiver(new_secret()).start(), SmtpReceiver(tmp_path)
    try:
        cfg = _config(mock, slack, hook, smtp, security=["siem"])
        gw: Gateway = gateway_factory({**cfg, "console": {"failed_sign_ins": 2}})
        for guess in ("guess-1", "guess-2", "guess-3"):  # from another machine; the third is refused unread
            assert raw_http.request(gw.port, "GET", "/api/v1/usage", None, {"Authorization": f"Bearer {guess}"},
                                    "127.0.0.2")[0] in (401, 429)
        [(_, delivered)] = hook.log.wait_for(lambda items: len(items) >= 1)
        text = json.dumps(delivered)
        assert "Admin token guessed wrongly from 127.0.0.2" in text and "2 wrong admin tokens" in text
        assert "guess-" not in text  # the guesses themselves are never kept or sent
        wait_until(lambda: [a["state"] for a in _alerts(gw, "security")] == ["delivered"], what="delivered")
        assert slack.log.items == []  # only the security channel
    finally:
        slack.stop()
        hook.stop()
