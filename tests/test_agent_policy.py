"""The agent policy: seven settings plus the release index; every problem reported, no password ever shown."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from tollhouse.config import CaptureMode, Enforcement
from tollhouse.control.agent_policy import (
    AgentPolicy,
    AgentPolicyError,
    UpdateChannel,
    UpdatePolicy,
    parse_agent_policy,
    redact_url,
)
from tollhouse.control.version import Version
from tollhouse.control.window import MaintenanceWindow

DEFAULTS = {"capture_mode": "telemetry", "update_policy": "notify-only", "update_channel": "stable",
            "maintenance_window": "", "pinned_version": "", "upstream_proxy": "", "enforcement": "off",
            "release_index": ""}


def test_defaults() -> None:
    policy = parse_agent_policy({})
    assert policy == AgentPolicy()
    assert policy.redacted() == DEFAULTS
    assert policy.capture_mode is CaptureMode.telemetry and policy.update_policy is UpdatePolicy.notify_only
    assert policy.update_channel is UpdateChannel.stable and policy.enforcement is Enforcement.off
    assert policy.window is None and policy.pinned is None


@pytest.mark.parametrize(("field", "given_value", "stored"), [
    ("capture_mode", "enterprise", "enterprise"),
    ("capture_mode", " Telemetry ", "telemetry"),
    ("update_policy", "auto", "auto"),
    ("update_policy", "notify-only", "notify-only"),
    ("update_policy", "manual", "manual"),
    ("update_policy", "DISABLED", "disabled"),
    ("update_channel", "beta", "beta"),
    ("maintenance_window", "Sun 02:00-04:00", "Sun 02:00-04:00"),
    ("maintenance_window", "any 23:00-2:00", "Any 23:00-02:00"),
    ("maintenance_window", "", ""),
    ("maintenance_window", None, ""),
    ("pinned_version", "v1.2.3", "v1.2.3"),
    ("pinned_version", "v1.2.3-beta.4", "v1.2.3-beta.4"),
    ("pinned_version", "", ""),
    ("pinned_version", None, ""),
    ("upstream_proxy", "http://proxy.example.com:8080", "http://proxy.example.com:8080"),
    ("upstream_proxy", "https://user:pass@proxy.example.com:3128/", "https://user:pass@proxy.example.com:3128"),
    ("upstream_proxy", "http://[::1]:3128", "http://[::1]:3128"),
    ("upstream_proxy", "", ""),
    ("enforcement", "on", "on"),
    ("enforcement", True, "on"),  # YAML 1.1's bare `on`
    ("enforcement", False, "off"),
    ("release_index", "https://releases.example.com/tollhouse/index.json",
     "https://releases.example.com/tollhouse/index.json"),
    ("release_index", "/srv/tollhouse/releases.json", "/srv/tollhouse/releases.json"),
    ("release_index", "file:///srv/tollhouse/releases.json", "file:///srv/tollhouse/releases.json"),
    ("release_index", r"C:\ProgramData\Tollhouse\releases.json", r"C:\ProgramData\Tollhouse\releases.json"),
])
def test_valid_settings_are_stored_canonically(field: str, given_value: Any, stored: str) -> None:
    policy = parse_agent_policy({field: given_value})
    assert policy.redacted()[field] == redact_url(stored)
    assert policy.model_dump(mode="json")[field] == stored
    assert {k: v for k, v in policy.redacted().items() if k != field} == {
        k: v for k, v in DEFAULTS.items() if k != field}


def test_parsed_views() -> None:
    policy = parse_agent_policy({"maintenance_window": "Sun 02:00-04:00", "pinned_version": "v1.2.3-beta.4"})
    assert policy.window == MaintenanceWindow(7, 120, 240)
    assert policy.pinned == Version(1, 2, 3, 4)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("capture_mode", "full", 'capture_mode: "full" is not one of telemetry, enterprise; example: "telemetry"'),
    ("capture_mode", None, "capture_mode: null is not one of telemetry, enterprise"),
    ("update_policy", "automatic",
     'update_policy: "automatic" is not one of auto, notify-only, manual, disabled; example: "auto"'),
    ("update_policy", 3, 'update_policy: 3 is a number, not a string; example: "auto"'),
    ("update_channel", "nightly", 'update_channel: "nightly" is not one of stable, beta; example: "stable"'),
    ("maintenance_window", "Sun 2am-4am",
     'maintenance_window: "Sun 2am-4am" is not DOW HH:MM-HH:MM; example: "Sun 02:00-04:00" or "Any 23:00-02:00"'),
    ("maintenance_window", "Sun 02:00-02:00", "maintenance_window: \"Sun 02:00-02:00\" starts and ends at the same"),
    ("maintenance_window", "Funday 01:00-02:00", 'maintenance_window: "Funday" is not a day'),
    ("maintenance_window", ["Sun", "02:00"], 'maintenance_window: ["Sun","02:00"] is a list, not a string; '
                                             'example: "Sun 02:00-04:00"'),
    ("pinned_version", "1.2.3",
     'pinned_version: "1.2.3" is not vN.M.K or vN.M.K-beta.X; example: "v1.2.3" or "v1.2.3-beta.4"; or empty'),
    ("pinned_version", "latest", 'pinned_version: "latest" is not vN.M.K'),
    ("upstream_proxy", "proxy.example.com:8080", "upstream_proxy: \"proxy.example.com:8080\" is not "
                                                 "http(s)://[user:pass@]host:port (not http:// or https://); "
                                                 'example: "http://proxy.example.com:8080"'),
    ("upstream_proxy", "socks5://proxy:1080", "(not http:// or https://)"),
    ("upstream_proxy", "http://proxy.example.com", "(no port)"),
    ("upstream_proxy", "http://:8080", "(no host)"),
    ("upstream_proxy", "http://proxy:0", "(no port)"),
    ("upstream_proxy", "http://proxy:99999", "(the port is not a number from 1 to 65535)"),
    ("upstream_proxy", "http://[::1:8080", "(not a URL)"),
    ("upstream_proxy", "http://proxy:8080/path", "(has a path, query or fragment)"),
    ("upstream_proxy", 8080, "upstream_proxy: a number, not a string"),
    ("enforcement", "enforce", 'enforcement: "enforce" is not one of off, on; example: "off"'),
    ("release_index", "releases.json", 'release_index: "releases.json" is not an http(s):// or file:// URL or an '
                                       'absolute file path; example: "https://releases.example.com/'),
    ("release_index", "ftp://mirror/index.json", 'release_index: "ftp://mirror/index.json" is not'),
    ("release_index", "https:///index.json", 'release_index: "https:///index.json" is not'),
])
def test_invalid_settings_name_the_field_and_show_an_example(field: str, value: Any, message: str) -> None:
    with pytest.raises(AgentPolicyError) as exc:
        parse_agent_policy({field: value})
    assert len(exc.value.problems) == 1
    problem = exc.value.problems[0]
    assert problem.startswith(f"{field}: ") and message in problem, problem
    assert "example:" in exc.value.problems[0]


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(AgentPolicyError) as exc:
        parse_agent_policy({"capture_mode": "full", "update_policy": "yes", "update_channel": "alpha",
                            "maintenance_window": "weekends", "pinned_version": "2", "upstream_proxy": "x",
                            "enforcement": "maybe", "release_index": "y", "auto_update": True, "colour": "red"})
    fields = [p.split(":")[0] for p in exc.value.problems]
    assert fields == ["capture_mode", "update_policy", "update_channel", "maintenance_window", "pinned_version",
                      "upstream_proxy", "enforcement", "release_index", "auto_update", "colour"]
    assert str(exc.value) == "\n".join(exc.value.problems)


def test_unknown_settings_are_errors() -> None:
    with pytest.raises(AgentPolicyError) as exc:
        parse_agent_policy({"update_polcy": "auto"})
    assert exc.value.problems == ("update_polcy: unknown setting; known: capture_mode, update_policy, "
                                  "update_channel, maintenance_window, pinned_version, upstream_proxy, enforcement, "
                                  "release_index",)


@pytest.mark.parametrize("data", [None, [], "auto", 3])
def test_the_document_must_be_an_object(data: object) -> None:
    with pytest.raises(AgentPolicyError, match="agent policy: expected an object of settings"):
        parse_agent_policy(data)


def test_the_model_is_frozen_and_validates_direct_construction() -> None:
    policy = AgentPolicy()
    with pytest.raises(ValidationError):
        policy.enforcement = Enforcement.on  # type: ignore[misc]
    with pytest.raises(ValidationError):
        AgentPolicy(maintenance_window="whenever")


# -- the proxy password never leaks ------------------------------------------------------------------

SECRET = "s3cr3t-PW"


@pytest.mark.parametrize("proxy", [
    f"http://bob:{SECRET}@proxy.example.com:8080",  # valid
    f"http://bob:{SECRET}@proxy.example.com",  # no port
    f"ftp://bob:{SECRET}@proxy.example.com:21",  # wrong scheme
    f"bob:{SECRET}@proxy.example.com:8080",  # no scheme
    f"http://bob:{SECRET}@[::1",  # unparseable
    f"http://bob:{SECRET}@proxy:8080/p",  # path
    f"http://bob:{SECRET}@proxy:port",  # bad port
    f"http://bob:a/{SECRET}@proxy:8080",  # a '/' in the password
    f"http://bob:a@{SECRET}@proxy:8080",  # an '@' in the password
    f"http://{SECRET}@proxy:8080",  # a token as the user name
    f"http://{SECRET}@proxy",  # ... invalid
    f"bob:x://{SECRET}@proxy:8080",  # looks like a scheme inside the password
])
def test_the_proxy_password_never_appears(proxy: str) -> None:
    _assert_hidden({"upstream_proxy": proxy, "release_index": f"https://u:{SECRET}@h/i.json"})
    _assert_hidden({"upstream_proxy": proxy, "capture_mode": "bad"})


@given(password=st.text(min_size=1).map(lambda t: "PW" + t + "PW"),
       host=st.from_regex(r"[a-z][a-z0-9.-]{0,20}(:[0-9]{1,6})?", fullmatch=True),
       scheme=st.sampled_from(["http://", "https://", "", "socks://", "http:/"]))
def test_no_password_appears_whatever_the_proxy(password: str, host: str, scheme: str) -> None:
    _assert_hidden({"upstream_proxy": f"{scheme}bob:{password}@{host}"}, password)


def _assert_hidden(data: dict[str, Any], secret: str = SECRET) -> None:
    try:
        policy = parse_agent_policy(data)
    except AgentPolicyError as exc:
        assert secret.strip() not in str(exc) and secret.strip() not in repr(exc.problems)
        return
    for text in (str(policy.redacted()), repr(policy), str(policy)):
        assert secret.strip() not in text
    assert secret in policy.upstream_proxy or secret in policy.release_index  # the agent still gets it


@pytest.mark.parametrize(("url", "redacted"), [
    ("http://bob:pw@proxy:8080", "http://bob:***@proxy:8080"),
    ("http://token@proxy:8080", "http://***@proxy:8080"),
    ("http://proxy:8080", "http://proxy:8080"),
    ("bob:pw@proxy:8080", "bob:***@proxy:8080"),
    ("", ""),
])
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
