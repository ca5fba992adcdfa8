"""Who a call is attributed to, and where provider keys may (not) go."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest

from conftest import ADMIN, Gateway, Mock, upstreams
from test_gateway_sdks import _post

REAL_KEY = "sk-real-provider-key"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tollhouse", *args], capture_output=True, text=True, timeout=60)


def test_gateway_key_maps_to_person_and_real_key_is_swapped_in(mock: Mock, gateway_factory: Any,
                                                                 tmp_path: Path) -> None:
    data = tmp_path / "data"
    directory = {"teams": [{"id": "platform"}], "people": [{"id": "alice", "team": "platform"}]}
    config = tmp_path / "tollhouse.json"
    config.write_text(json.dumps({"directory": directory}))
    made = _cli("keys", "create", "--user", "alice", "--config", str(config), "--data-dir", str(data))
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("th-")
    gw: Gateway = gateway_factory({
        "providers": upstreams(mock.url, api_key=REAL_KEY), "directory": directory,
    }, data_dir=data)
    client = openai.OpenAI(base_url=gw.url + "/openai/v1", api_key=key, max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    # The provider saw the real key, never the gateway key.
    assert mock.stats.last_headers["Authorization"] == f"Bearer {REAL_KEY}"
    ev = gw.events()[0]
    assert ev["subject"] == "alice" and ev["team"] == "platform"
    # Anthropic carries keys in x-api-key: same swap.
    status, _ = _post(gw.url + "/anthropic/v1/messages",
                      {"model": "claude-3-5-sonnet-20241022", "max_tokens": 3,
                       "messages": [{"role": "user", "content": "x"}]}, {"x-api-key": key})
    assert status == 200 and mock.stats.last_headers["x-api-key"] == REAL_KEY
    # Revoked keys stop working (admin API revocation takes effect at once).
    status, body, _ = gw.get("/api/v1/keys")
    prefix = json.loads(body)["keys"][0]["prefix"]
    assert key.startswith(prefix) and len(prefix) < len(key)
    revoked = _cli("keys", "revoke", prefix, "--data-dir", str(data))
    assert revoked.returncode == 0, revoked.stderr


def test_unknown_gateway_key_is_refused_without_reaching_the_provider(gateway: Gateway, mock: Mock) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/openai/v1", api_key="th-not-a-real-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert "unknown or revoked" in str(exc.value)
    assert mock.stats.total == 0


def test_admin_api_creates_and_revokes_keys(gateway: Gateway, mock: Mock) -> None:
    req = urllib.request.Request(gateway.url + "/api/v1/keys", data=b'{"user": "bob"}', method="POST",
                                 headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(req) as resp:
        created = json.loads(resp.read())
    client = openai.OpenAI(base_url=gateway.url + "/openai/v1", api_key=created["key"], max_retries=0)
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert gateway.events()[0]["subject"] == "bob"
    req = urllib.request.Request(gateway.url + f"/api/v1/keys/{created['prefix']}", method="DELETE",
                                 headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 200
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])


def test_provider_key_hash_identifies_a_person(mock: Mock, gateway_factory: Any) -> None:
    personal = "sk-carols-own-key"
    gw: Gateway = gateway_factory({
        "providers": upstreams(mock.url),
        "directory": {"people": [{"id": "carol", "provider_key_sha256": [hashlib.sha256(personal.encode())
                                                                         .hexdigest()]}]},
    })
    for key in (personal, "sk-someone-else"):
        openai.OpenAI(base_url=gw.url + "/openai/v1", api_key=key, max_retries=0).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    subjects = [e["subject"] for e in gw.events()]
    other = "key:" + hashlib.sha256(b"sk-someone-else").hexdigest()[:12]
    assert subjects == [other, "carol"]
    # The client's own key is forwarded unchanged (no gateway key involved).
    assert mock.stats.last_headers["Authorization"] == "Bearer sk-someone-else"


def test_user_header_is_ignored_unless_trusted(mock: Mock, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory({"providers": upstreams(mock.url)})
    openai.OpenAI(base_url=gw.url + "/openai/v1", api_key="sk-x", max_retries=0,
                  default_headers={"X-Tollhouse-User": "ceo"}).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert gw.events()[0]["subject"] != "ceo"
    # Our own headers never reach the provider.
    assert "X-Tollhouse-User" not in mock.stats.last_headers


def test_upstream_host_comes_only_from_config(gateway: Gateway, mock: Mock) -> None:
    status, _ = _post(gateway.url + "/openai/v1/chat/completions",
                      {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
                      {"Host": "evil.example:80", "X-Forwarded-Host": "evil.example",
                       "X-Tollhouse-Upstream": "http://evil.example"})
    assert status == 200 and mock.stats.total == 1  # it went to the configured upstream


def test_provider_keys_never_in_events_logs_or_errors(gateway: Gateway, mock: Mock,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = openai.OpenAI(base_url=gateway.url + "/openai/v1", api_key="sk-secret-client-key", max_retries=0)
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}],
                                       extra_headers={"X-Mock-Fault": "429"})
    _, events, _ = gateway.get("/api/v1/events")
    _, metrics, _ = gateway.get("/metrics")
    for blob in (events, metrics, caplog.text.encode()):
        assert b"sk-secret-client-key" not in blob and REAL_KEY.encode() not in blob


def test_admin_api_needs_the_token(gateway: Gateway) -> None:
    for token in (None, "wrong"):
        status, body, _ = gateway.get("/api/v1/events", token=token)
        assert status == 401 and b"admin token" in body
    status, body, _ = gateway.get("/api/v1/events?limit=abc")
    assert status == 400 and b"limit" in body


def test_unknown_project_header_is_refused_when_enforcing(mock: Mock, gateway_factory: Any) -> None:
    directory = {"teams": [{"id": "platform"}], "projects": [{"id": "checkout", "team": "platform"}],
                 "people": [{"id": "alice", "team": "platform"}]}
    headers = {"X-Tollhouse-User": "alice", "X-Tollhouse-Project": "made-up"}
    enforcing: Gateway = gateway_factory({"identity": {"trust_user_header": True}, "enforcement": "on",
                                          "providers": upstreams(mock.url), "directory": directory})
    client = openai.OpenAI(base_url=enforcing.url + "/openai/v1", api_key="sk-x", max_retries=0,
                           default_headers=headers)
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert "made-up" in str(exc.value) and "checkout" in str(exc.value)
    assert mock.stats.total == 0
    # Observe mode blocks nothing: the call goes through and is attributed as the caller said.
    observing: Gateway = gateway_factory({"identity": {"trust_user_header": True},
                                          "providers": upstreams(mock.url), "directory": directory})
    openai.OpenAI(base_url=observing.url + "/openai/v1", api_key="sk-x", max_retries=0,
                  default_headers=headers).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert observing.events()[0]["project"] == "made-up"
