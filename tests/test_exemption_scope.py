"""Issue 16, exemptions: an approved override covers the rule for the model and provider requested (a wider
grant is explicit); every call it lets through names it (event and header) and is audited; revocation and
expiry end it (audited)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from conftest import Gateway, Mock
from test_exemptions import T0, _api, _audit, _blocked, _passes, clock, enforcing  # noqa: F401 (fixtures)
from test_gateway_sdks import oai
from test_ledger_gateway import FakeClock

CHAT = [{"role": "user", "content": "x"}]


def _file_for(gw: Gateway, model: str, provider: str = "openai") -> str:
    status, body = _api(gw, "POST", "/api/v1/exemptions", {
        "subject": "alice", "rule": "approved-models", "provider": provider, "model": model,
        "justification": f"benchmarking {model}"}, token=None)
    assert status == 201, body
    exemption_id: str = body["id"]
    return exemption_id


def _approve(gw: Gateway, exemption_id: str, **extra: Any) -> dict[str, Any]:
    status, body = _api(gw, "POST", f"/api/v1/exemptions/{exemption_id}/approve", {"hours": 8, **extra},
                        actor="carol")
    assert status == 200, body
    approved: dict[str, Any] = body["exemption"]
    return approved


def _event_of(gw: Gateway, model: str) -> dict[str, Any]:
    return next(e for e in gw.events() if e["requested_model"] == model)


def test_an_override_covers_only_the_model_and_provider_requested(enforcing: Gateway) -> None:
    gw = enforcing
    exemption_id = _approve(gw, _file_for(gw, "gpt-4o"))["id"]
    headers = _passes(gw, "gpt-4o")
    assert headers["x-tollhouse-exemption"] == exemption_id
    for other in ("gpt-4.5-preview", "claude-3-opus-20240229"):
        assert _blocked(gw, other)["rule_id"] == "approved-models"
    event = _event_of(gw, "gpt-4o")
    assert event["decision"] == "allow" and event["exemption_id"] == exemption_id
    assert _event_of(gw, "gpt-4.5-preview")["exemption_id"] is None
    (used,) = _audit(gw, "exemption.used")
    assert used["data"]["id"] == exemption_id and used["data"]["event_id"] == event["id"]
    assert used["data"]["model"] == "gpt-4o" and used["actor"] == "alice"
