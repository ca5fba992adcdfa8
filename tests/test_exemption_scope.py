"""Issue 16, exemptions: an approved override covers the rule for the model and provider requested (a wider
grant is explicit); every call it lets through names it (event and header) and is audited; revocation and
expiry end it (audited)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Gateway, Mock, upstreams
from test_exemptions import NO_O1, T0, _api, _audit, _blocked, _form, _http, _inputs, _passes
from test_ledger_gateway import FakeClock
from test_policy_gateway import ALLOWLIST, DIRECTORY


@pytest.fixture
def enforcing(mock: Mock, tmp_path: Path) -> Iterator[Gateway]:
    """Enforcing the approved-models allowlist and an o1 ban."""
    gw = Gateway({"identity": {"trust_user_header": True}, "providers": upstreams(mock.url), "enforcement": "on",
                  "directory": DIRECTORY, "policy": {"rules": [ALLOWLIST, NO_O1]}}, tmp_path / "data").start()
    try:
        yield gw
    finally:
        gw.stop()


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


def test_a_wider_grant_is_explicit(enforcing: Gateway) -> None:
    gw = enforcing
    exemption_id = _file_for(gw, "gpt-4o")
    status, body = _api(gw, "POST", f"/api/v1/exemptions/{exemption_id}/approve", {"models": ["gpt-4o", 4]})
    assert status == 400 and body["error"]["field"] == "models"  # names only
    approved = _approve(gw, exemption_id, models=["*"])
    assert (approved["models"], approved["providers"]) == (["*"], ["openai"])
    for model in ("gpt-4o", "gpt-4.5-preview", "claude-3-opus-20240229"):
        assert _passes(gw, model)["x-tollhouse-exemption"] == exemption_id
    assert _blocked(gw, "o1")["rule_id"] == "no-o1"  # other rules still apply
    (entry,) = _audit(gw, "exemption.approved")
    assert entry["data"]["models"] == ["*"] and entry["data"]["requested_model"] == "gpt-4o"
    assert len(_audit(gw, "exemption.used")) == 3


def test_revoking_stops_an_override_at_once(enforcing: Gateway) -> None:
    gw = enforcing
    first, second = _approve(gw, _file_for(gw, "gpt-4o"))["id"], _approve(gw, _file_for(gw, "gpt-4.5-preview"))["id"]
    assert _passes(gw, "gpt-4o")["x-tollhouse-exemption"] == first
    assert _api(gw, "POST", f"/api/v1/exemptions/{first}/revoke", {}, token=None)[0] == 401
    status, body = _api(gw, "POST", f"/api/v1/exemptions/{first}/revoke", {"reason": "project ended"},
                        actor="carol")
    assert status == 200 and body["exemption"]["status"] == "revoked" and body["exemption"]["active"] is False
    assert body["exemption"]["revoked_by"] == "carol"
    assert _blocked(gw, "gpt-4o")["rule_id"] == "approved-models"
    status, body = _api(gw, "POST", f"/api/v1/exemptions/{first}/revoke", {})
    assert status == 409 and body["error"]["code"] == "not_in_force"
    assert _api(gw, "POST", "/api/v1/exemptions/ex-nope/revoke", {})[0] == 404
    (entry,) = _audit(gw, "exemption.revoked")
    assert entry["actor"] == "carol" and entry["data"]["id"] == first and entry["data"]["reason"] == "project ended"
    _, body = _api(gw, "GET", "/api/v1/exemptions?status=revoked")
    assert [x["id"] for x in body["exemptions"]] == [first]

    # The console's queue offers Revoke on approved overrides still in force (and only on those).
    bearer = {"Authorization": "Bearer test-admin-token"}
    status, page, _ = _http(gw, "GET", "/console/exemptions", headers=bearer)
    actions = _inputs(page).actions
    assert f"/console/exemptions/{second}/revoke" in actions and f"/console/exemptions/{first}/revoke" not in actions
    assert _passes(gw, "gpt-4.5-preview")["x-tollhouse-exemption"] == second
    status, _, headers = _form(gw, f"/console/exemptions/{second}/revoke", {"reason": ""}, bearer)
    assert status == 303 and headers["location"] == "/console/exemptions"
    assert _blocked(gw, "gpt-4.5-preview")["rule_id"] == "approved-models"
    _, page, _ = _http(gw, "GET", f"/console/exemptions/{second}")
    assert b"revoked" in page


def test_expiry_is_audited_once(mock: Mock, tmp_path: Path) -> None:
    fake = FakeClock(T0)
    gw = Gateway({"identity": {"trust_user_header": True}, "providers": upstreams(mock.url), "enforcement": "on",
                  "directory": DIRECTORY, "policy": {"rules": [ALLOWLIST]},
                  "exemptions": {"refresh_interval_s": 0.05}}, tmp_path / "data", clock=fake).start()
    try:
        exemption_id = _approve(gw, _file_for(gw, "gpt-4o"), hours=1)["id"]
        assert _passes(gw, "gpt-4o")["x-tollhouse-exemption"] == exemption_id
        fake.now = T0.timestamp() + 3600
        assert _blocked(gw, "gpt-4o")["rule_id"] == "approved-models"  # at once, whatever the sweep does
        deadline = time.monotonic() + 5
        while not _audit(gw, "exemption.expired"):
            assert time.monotonic() < deadline, "the expiry was never audited"
            time.sleep(0.05)
        assert gw.state is not None
        loader = gw.state.override_loader
        seen = loader.refreshes
        while loader.refreshes < seen + 2:  # two more sweeps: audited once, not once per sweep
            assert time.monotonic() < deadline, "the overrides stopped refreshing"
            time.sleep(0.05)
        (entry,) = _audit(gw, "exemption.expired")
        assert entry["data"]["id"] == exemption_id and entry["data"]["expires"] == "2026-03-02T11:00:00.000Z"
        assert entry["data"]["models"] == ["gpt-4o"]
        _, body = _api(gw, "GET", f"/api/v1/exemptions/{exemption_id}", token=None)
        assert body["exemption"]["status"] == "approved" and body["exemption"]["active"] is False
    finally:
        gw.stop()
