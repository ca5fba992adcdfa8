"""The fleet agent end to end: a real control plane (a gateway), the agent on its own socket in front of the
mock provider, the openai SDK pointed at the agent."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from conftest import ADMIN, Gateway, Mock, ServedInThread, free_port, upstreams
from connect_proxy import ConnectProxy
from test_policy_versions import DENY_4O
from tollhouse.agent.bundle import Retry
from tollhouse.agent.cache import CACHE_FILE, BundleCache
from tollhouse.agent.runner import AgentOptions, run_agent
from tollhouse.agent.settings import LocalLayers
from tollhouse.config import parse_settings

DIRECTORY = {
    "org": "acme",
    "teams": [{"id": "engineering"}, {"id": "platform", "parent": "engineering"}],
    "people": [{"id": "alice", "team": "platform"}, {"id": "bob", "team": "platform"}],
}
FAST = Retry(first_s=0.05, max_s=0.3, unauthorized_s=0.3)


class Agent(ServedInThread):
    """`run_agent` served from a background thread (the same code `tollhouse agent` runs)."""

    what = "agent"

    def __init__(self, control_plane: str, token: str, data_dir: Path, mock: Mock,
                 managed: dict[str, str] | None = None, env: dict[str, str] | None = None, wait_s: int = 30,
                 config: dict[str, Any] | None = None, update_interval_s: float = 3600.0) -> None:
        super().__init__()
        self.layers = LocalLayers(env or {}, {"TOLLHOUSE_USER": "alice", **(managed or {})}, "(test managed)",
                                  "login-name")
        self.local = parse_settings({"admin_token": ADMIN, "providers": upstreams(mock.url), **(config or {})},
                                    "(agent test)")
        self.restarts: list[float] = []  # an installed update would restart the agent: recorded instead
        self.opts = AgentOptions(control_plane, token, "127.0.0.1", free_port(), wait_s, FAST, 0.2,
                                 update_interval_s=update_interval_s, restart=lambda: self.restarts.append(time.time()))
        self.data_dir = data_dir

    async def _serve(self, ready: Any, stop: asyncio.Event) -> None:
        await run_agent(self.local, self.layers, self.opts, self.data_dir, ready, stop)

    def start(self) -> Agent:
        started: Agent = super().start()
        return started

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.opts.port}"

    def client(self, **headers: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/openai/v1", api_key="sk-laptop", max_retries=0,
                             default_headers=headers or None)

    def status_of(self, model: str) -> int:
        """The HTTP status of one chat call for `model` (200, or the error's)."""
        try:
            self.client().chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        except openai.APIStatusError as exc:
            return exc.status_code
        return 200

    def health(self) -> dict[str, Any]:
        status, body, _ = _http(self.url, "GET", "/healthz")
        assert status == 200
        result: dict[str, Any] = json.loads(body)
        return result

    def api(self, path: str) -> Any:
        status, body, _ = _http(self.url, "GET", path, token=ADMIN)
        assert status == 200, body
        return json.loads(body)


def _http(base: str, method: str, path: str, token: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    gw = Gateway.__new__(Gateway)
    gw.port = int(base.rsplit(":", 1)[1])
    return gw.request(method, path, token=token)


@pytest.fixture
def control(gateway_factory: Any, mock: Mock) -> Gateway:
    gw: Gateway = gateway_factory({"providers": upstreams(mock.url), "directory": DIRECTORY})
    return gw


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.stop()


def _start(agents: list[Agent], *args: Any, **kw: Any) -> Agent:
    agent = Agent(*args, **kw)
    agents.append(agent)
    return agent.start()


def _until(check: Any, timeout_s: float = 5.0) -> float:
    """Seconds until `check()` is true (fails after the timeout)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, "condition not reached in time"
        time.sleep(0.02)
    return time.monotonic() - started


def _put(control: Gateway, path: str, body: Any) -> None:
    status, answer, _ = control.request("PUT", path, body)
    assert status == 200, answer


def test_calls_are_attributed_to_the_configured_user_without_any_header(control: Gateway, token: str, mock: Mock,
                                                                         agents: list[Agent], tmp_path: Path) -> None:
    agent = _start(agents, control.url, token, tmp_path / "agent", mock)
    assert agent.health()["control_plane"]["state"] == "connected"
    reply = agent.client().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content
    agent.client(**{"X-Tollhouse-User": "bob"}).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])  # not trusted: still alice
    events = agent.api("/api/v1/events")["events"]
    assert [(e["subject"], e["team"]) for e in events] == [("alice", "platform")] * 2  # team from the bundle
    agents_seen = json.loads(control.get("/api/v1/agents")[1])["agents"]
    assert len(agents_seen) == 1 and agents_seen[0]["version"]
    # the shipper delivers them to the control plane, attributed the same way
    _until(lambda: len(control.events()) == 2, 10.0)
    assert {(e["id"], e["subject"]) for e in control.events()} == {(e["id"], "alice") for e in events}


def test_a_trusted_header_names_the_subject_when_configured(control: Gateway, token: str, mock: Mock,
                                                            agents: list[Agent], tmp_path: Path) -> None:
    agent = _start(agents, control.url, token, tmp_path / "agent", mock,
                   config={"identity": {"trust_user_header": True}})
    agent.client(**{"X-Tollhouse-User": "bob"}).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert agent.api("/api/v1/events")["events"][0]["subject"] == "bob"


def test_a_policy_edit_is_enforced_by_the_agent_within_a_second(control: Gateway, token: str, mock: Mock,
                                                                 agents: list[Agent], tmp_path: Path) -> None:
    _put(control, "/api/v1/agent-policy", {"enforcement": "on"})
    agent = _start(agents, control.url, token, tmp_path / "agent", mock)
    assert agent.status_of("gpt-4o") == 200
    edited = time.monotonic()
    _put(control, "/api/v1/policy", {"rules": [DENY_4O]})
    took = _until(lambda: agent.status_of("gpt-4o") == 403)
    assert time.monotonic() - edited < 1.0, f"propagation took {took:.3f}s"
    # the change is a version in the agent's own store, from the control plane, and in its audit trail
    policy = agent.api("/api/v1/policy")
    assert policy["rules"] == [DENY_4O]
    kinds = [(e["kind"], e["actor"]) for e in agent.api("/api/v1/audit")["entries"]]
    assert ("policy.changed", "control-plane") in kinds and ("directory.changed", "control-plane") in kinds
    assert agent.health()["policy"]["source"] == "control-plane"


def test_enforcement_is_switched_on_and_off_from_the_control_plane_live(control: Gateway, token: str, mock: Mock,
                                                                        agents: list[Agent], tmp_path: Path) -> None:
    _put(control, "/api/v1/policy", {"rules": [DENY_4O]})
    agent = _start(agents, control.url, token, tmp_path / "agent", mock)
    assert agent.status_of("gpt-4o") == 200 and agent.health()["enforcement"] == "off"  # observe: recorded only
    _put(control, "/api/v1/agent-policy", {"enforcement": "on", "capture_mode": "enterprise"})
    _until(lambda: agent.status_of("gpt-4o") == 403, 2.0)
    health = agent.health()
    assert health["enforcement"] == "on" and health["capture_mode"] == "enterprise"
    assert health["agent"]["settings"]["enforcement"] == {"value": "on", "source": "control-plane"}
    _put(control, "/api/v1/agent-policy", {"enforcement": "off"})
    _until(lambda: agent.status_of("gpt-4o") == 200, 2.0)
    decisions = [e["decision"] for e in agent.api("/api/v1/events")["events"]]
    assert "block" in decisions


def test_a_local_override_beats_the_control_plane(control: Gateway, token: str, mock: Mock, agents: list[Agent],
                                                  tmp_path: Path) -> None:
    _put(control, "/api/v1/policy", {"rules": [DENY_4O]})
    _put(control, "/api/v1/agent-policy", {"enforcement": "on"})
    agent = _start(agents, control.url, token, tmp_path / "agent", mock, managed={"TOLLHOUSE_ENFORCEMENT": "off"})
    assert agent.status_of("gpt-4o") == 200
    assert agent.health()["agent"]["settings"]["enforcement"] == {"value": "off", "source": "managed"}


def test_offline_the_agent_keeps_enforcing_the_cached_policy_also_after_a_restart(
        control: Gateway, token: str, mock: Mock, agents: list[Agent], tmp_path: Path) -> None:
    _put(control, "/api/v1/policy", {"rules": [DENY_4O]})
    _put(control, "/api/v1/agent-policy", {"enforcement": "on"})
    agent = _start(agents, control.url, token, tmp_path / "agent", mock)
    assert agent.status_of("gpt-4o") == 403
    control.stop()
    _until(lambda: agent.health()["control_plane"]["state"] == "offline")
    assert agent.status_of("gpt-4o") == 403 and agent.status_of("gpt-4o-mini") == 200
    agent.stop()

    again = _start(agents, control.url, token, tmp_path / "agent", mock)  # same data dir, control plane down
    plane = again.health()["control_plane"]
    assert plane["state"] == "offline" and plane["cache"] == "loaded" and plane["etag"]
    assert plane["running_on"] == "control-plane bundle" and plane["bundle_age_s"] >= 0
    assert again.health()["enforcement"] == "on"
    assert again.status_of("gpt-4o") == 403


def test_a_corrupt_cache_is_ignored_never_applied(control: Gateway, token: str, mock: Mock, agents: list[Agent],
                                                  tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _put(control, "/api/v1/agent-policy", {"enforcement": "on", "capture_mode": "enterprise"})
    agent = _start(agents, control.url, token, tmp_path / "agent", mock)
    agent.stop()
    control.stop()
    path = tmp_path / "agent" / CACHE_FILE
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    again = _start(agents, control.url, token, tmp_path / "agent", mock)
    plane = again.health()["control_plane"]
    assert plane["cache"] == "corrupt" and plane["state"] == "never-connected" and plane["etag"] is None
    assert again.health()["capture_mode"] == "telemetry"
    assert "corrupt (checksum mismatch)" in caplog.text


def test_a_never_connected_agent_runs_on_the_managed_file_and_defaults(mock: Mock, agents: list[Agent],
                                                                        tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    agent = _start(agents, nowhere, "the-unused", tmp_path / "agent", mock,
                   managed={"TOLLHOUSE_ENFORCEMENT": "on"})
    health = agent.health()
    plane = health["control_plane"]
    assert plane["state"] == "never-connected" and plane["running_on"] == "managed file and defaults"
    assert plane["cache"] == "none" and "cannot reach the control plane" in (plane["error"] or "x")
    assert health["enforcement"] == "on" and health["capture_mode"] == "telemetry"
    settings = health["agent"]["settings"]
    assert settings["enforcement"]["source"] == "managed" and settings["capture_mode"]["source"] == "default"
    assert agent.status_of("gpt-4o") == 200  # no policy yet: nothing to block


def test_a_revoked_token_is_reported_and_the_cached_policy_stays(control: Gateway, token: str, mock: Mock,
                                                                 agents: list[Agent], tmp_path: Path) -> None:
    _put(control, "/api/v1/policy", {"rules": [DENY_4O]})
    _put(control, "/api/v1/agent-policy", {"enforcement": "on"})
    agent = _start(agents, control.url, token, tmp_path / "agent", mock, wait_s=1)
    prefix = json.loads(control.get("/api/v1/agent/tokens")[1])["tokens"][0]["prefix"]
    assert control.request("DELETE", f"/api/v1/agent/tokens/{prefix}")[0] == 200
    _until(lambda: "REJECTED" in (agent.health()["control_plane"]["error"] or ""), 5.0)
    assert agent.status_of("gpt-4o") == 403
    assert token not in json.dumps(agent.health())


def test_a_bundle_that_changes_directory_and_policy_together_is_applied(
        control: Gateway, token: str, mock: Mock, agents: list[Agent], tmp_path: Path) -> None:
    _put(control, "/api/v1/policy", {"rules": [DENY_4O]})  # aimed at team platform
    _put(control, "/api/v1/agent-policy", {"enforcement": "on"})
    agent = _start(agents, control.url, token, tmp_path / "agent", mock)
    agent.stop()
    control.stop()
    cache = BundleCache(tmp_path / "agent")
    cached = cache.load()
    assert cached is not None
    bundle = cached.bundle
    # rename the team: neither the directory alone (the rule names platform) nor the policy alone fits
    bundle["directory"]["teams"] = [{"id": "engineering"}, {"id": "core", "parent": "engineering"}]
    bundle["directory"]["people"] = [{"id": "alice", "team": "core"}]
    bundle["policy"]["rules"] = [dict(DENY_4O, team="core")]
    bundle["etag"] = '"renamed"'
    cache.save(bundle, cached.received_ms)
    again = _start(agents, control.url, token, tmp_path / "agent", mock)
    assert again.health()["agent"]["bundle_errors"] == []
    assert again.api("/api/v1/policy")["rules"] == [dict(DENY_4O, team="core")]
    assert again.status_of("gpt-4o") == 403


def test_a_bundle_whose_policy_does_not_validate_keeps_the_previous_one(
        control: Gateway, token: str, mock: Mock, agents: list[Agent], tmp_path: Path) -> None:
    _put(control, "/api/v1/policy", {"rules": [DENY_4O]})
    _put(control, "/api/v1/agent-policy", {"enforcement": "on"})
    agent = _start(agents, control.url, token, tmp_path / "agent", mock)
    version = agent.health()["policy"]["version"]
    agent.stop()
    control.stop()
    cache = BundleCache(tmp_path / "agent")
    cached = cache.load()
    assert cached is not None
    cached.bundle["policy"]["rules"] = [{"id": "broken", "condition": {"type": "no-such-type"}}]
    cached.bundle["etag"] = '"broken"'
    cache.save(cached.bundle, cached.received_ms)
    again = _start(agents, control.url, token, tmp_path / "agent", mock)
    health = again.health()
    assert health["policy"]["version"] == version and "broken" in (health["policy"]["error"] or "")
    assert any("policy not applied" in e for e in health["agent"]["bundle_errors"])
    assert again.status_of("gpt-4o") == 403  # the previous policy is still enforced


def test_an_upstream_proxy_change_applies_live(control: Gateway, token: str, mock: Mock, agents: list[Agent],
                                               tmp_path: Path) -> None:
    """The provider clients are rebuilt: a proxy nobody listens on breaks calls at once, removing it heals."""
    agent = _start(agents, control.url, token, tmp_path / "agent", mock)
    assert agent.status_of("gpt-4o-mini") == 200
    _put(control, "/api/v1/agent-policy", {"upstream_proxy": f"http://svc:pw@127.0.0.1:{free_port()}"})
    _until(lambda: agent.status_of("gpt-4o-mini") == 502, 3.0)
    assert agent.health()["agent"]["settings"]["upstream_proxy"]["value"].startswith("http://svc:***@")
    _put(control, "/api/v1/agent-policy", {"upstream_proxy": ""})
    _until(lambda: agent.status_of("gpt-4o-mini") == 200, 3.0)


def test_an_update_available_reaches_the_control_plane(control: Gateway, token: str, mock: Mock, tmp_path: Path,
                                                      agents: list[Agent]) -> None:
    index = tmp_path / "releases.json"
    index.write_text(json.dumps({"releases": [{"version": "v9.9.9", "requirement": "tollhouse==9.9.9"}]}))
    agent = _start(agents, control.url, token, tmp_path / "agent", mock, update_interval_s=0.5)
    status, _, _ = control.request("PUT", "/api/v1/agent-policy", {"update_policy": "manual",
                                                                    "release_index": str(index)})
    assert status == 200
    deadline = time.monotonic() + 15
    while True:
        _, raw, _ = control.request("GET", "/api/v1/audit")
        notices = [e for e in json.loads(raw)["entries"] if e["kind"] == "agent.update.available"]
        if notices:
            break
        assert time.monotonic() < deadline, agent.health().get("update")
        time.sleep(0.2)
    assert notices[0]["data"]["target"] == "v9.9.9" and notices[0]["actor"].startswith("agent:")
    assert "v9.9.9" in json.dumps(agent.health()["update"])  # /healthz says an update is available
    listed = json.loads(control.request("GET", "/api/v1/agents")[1])["agents"]
    assert any(a["status"].get("last_notice") == "agent.update.available" for a in listed)
    assert agent.restarts == []  # manual: told, never installed


def test_installed_agent_runs_from_the_managed_file_alone(control: Gateway, token: str, mock: Mock,
                                                          tmp_path: Path) -> None:
    """What MDM does: `tollhouse install`, then the service runs `tollhouse agent` with no arguments."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("TOLLHOUSE_DATA_DIR", None)
    cmd = [sys.executable, "-m", "tollhouse"]
    installed = subprocess.run([*cmd, "install", "--prefix", str(tmp_path / "root"), "--control-plane", control.url,
                                "--token", token, "--user", "alice", "--port", str(port)],
                               env=env, capture_output=True, text=True, timeout=60)
    assert installed.returncode == 0, installed.stderr
    env["TOLLHOUSE_MANAGED_CONFIG"] = str(tmp_path / "root" / "etc" / "tollhouse.env")  # what the unit sets
    local = tmp_path / "local.yaml"
    local.write_text(json.dumps({"providers": upstreams(mock.url)}))
    proc = subprocess.Popen([*cmd, "agent", "--config", str(local)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _until(lambda: _up(url), 30.0)
        client = openai.OpenAI(base_url=url + "/openai/v1", api_key="sk-laptop", max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        _until(lambda: [e["subject"] for e in control.events()] == ["alice"], 15.0)
        shown = subprocess.run([*cmd, "config", "show", "--json"], env=env, capture_output=True, text=True,
                               timeout=60)
        settings = json.loads(shown.stdout)
        assert settings["control_plane"] == {"value": control.url, "source": "managed"}
        assert settings["user"] == {"value": "alice", "source": "managed"}
        assert token not in shown.stdout  # masked
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)  # stops promptly, draining its events
    assert proc.returncode == 0, err[-2000:]
    assert f"http://127.0.0.1:{port}" in out and "Traceback" not in err


def _up(url: str) -> bool:
    try:
        return _http(url, "GET", "/healthz")[0] == 200
    except OSError:
        return False


def test_a_proxy_from_the_control_plane_carries_calls_and_telemetry(control: Gateway, token: str, mock: Mock,
                                                                    agents: list[Agent], tmp_path: Path) -> None:
    agent = _start(agents, control.url, token, tmp_path / "agent", mock)
    with ConnectProxy(auth=("svc", "s3cret")) as proxy:
        _put(control, "/api/v1/agent-policy", {"upstream_proxy": proxy.url_with_auth})
        _until(lambda: agent.health()["agent"]["settings"]["upstream_proxy"]["source"] == "control-plane", 5.0)
        assert agent.status_of("gpt-4o-mini") == 200
        _until(lambda: len(control.events()) == 1, 10.0)
        seen = list(proxy.requests)
    assert any("/v1/chat/completions" in r for r in seen), seen  # the provider call went through it
    assert any("/api/v1/agent/events" in r for r in seen), seen  # and so did the telemetry


def test_every_call_online_or_offline_allowed_or_blocked_reaches_the_control_plane_once(
        mock: Mock, agents: list[Agent], tmp_path: Path) -> None:
    plane_dir = tmp_path / "control"
    control = Gateway({"providers": upstreams(mock.url), "directory": DIRECTORY}, plane_dir).start()
    try:
        token = json.loads(control.request("POST", "/api/v1/agent/tokens", {"label": "l"})[1])["token"]
        _put(control, "/api/v1/policy", {"rules": [DENY_4O]})
        _put(control, "/api/v1/agent-policy", {"enforcement": "on"})
        agent = _start(agents, control.url, token, tmp_path / "agent", mock)
        online = [agent.status_of(m) for m in ("gpt-4o-mini", "gpt-4o")]
        _until(lambda: len(control.events()) == 2, 10.0)
        port = control.port
    finally:
        control.stop()
    _until(lambda: agent.health()["control_plane"]["state"] == "offline")
    offline = [agent.status_of(m) for m in ("gpt-4o-mini", "gpt-4o", "gpt-4o-mini")]
    agent.stop()  # and a restart while the control plane is still away
    agent = _start(agents, f"http://127.0.0.1:{port}", token, tmp_path / "agent", mock)
    offline.append(agent.status_of("gpt-4o"))
    assert online == [200, 403] and offline == [200, 403, 200, 403]
    control = Gateway({"providers": upstreams(mock.url), "directory": DIRECTORY}, plane_dir, port=port).start()
    try:
        _until(lambda: len(control.events()) == 6, 20.0)
        time.sleep(1.5)  # a few more shipping rounds: nothing arrives twice
        events = control.events()
        local = agent.api("/api/v1/events")["events"]
    finally:
        control.stop()
    assert len(events) == 6 and len({e["id"] for e in events}) == 6
    assert sorted(e["id"] for e in events) == sorted(e["id"] for e in local)
    assert sorted(e["decision"] for e in events) == ["allow"] * 3 + ["block"] * 3


def test_kill_9_of_the_agent_loses_no_spooled_event(control: Gateway, token: str, mock: Mock, tmp_path: Path) -> None:
    """Calls answered by an agent that is then killed with SIGKILL (control plane unreachable, so nothing was
    shipped yet) all reach the control plane once after the agent starts again."""
    port, data = free_port(), tmp_path / "agent"
    local = tmp_path / "local.yaml"
    local.write_text(json.dumps({"providers": upstreams(mock.url)}))
    managed = tmp_path / "tollhouse.env"
    managed.write_text("TOLLHOUSE_USER=alice\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TOLLHOUSE_MANAGED_CONFIG": str(managed)}
    argv = [sys.executable, "-m", "tollhouse", "agent", "--token", token, "--config", str(local),
            "--port", str(port), "--data-dir", str(data)]
    dead = f"http://127.0.0.1:{free_port()}"  # first run: the control plane is unreachable
    proc = subprocess.Popen([*argv, "--control-plane", dead], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        _until(lambda: _up(url), 30.0)
        client = openai.OpenAI(base_url=url + "/openai/v1", api_key="sk-laptop", max_retries=0)
        for _ in range(5):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    finally:
        proc.kill()  # SIGKILL: no flush, no drain
        proc.wait(10)
    proc = subprocess.Popen([*argv, "--control-plane", control.url], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        _until(lambda: len(control.events()) == 5, 30.0)
        time.sleep(1.0)
        events = control.events()
    finally:
        proc.terminate()
        proc.wait(20)
    assert len(events) == 5 and len({e["id"] for e in events}) == 5 and {e["subject"] for e in events} == {"alice"}
