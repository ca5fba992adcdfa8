"""The agent's settings: precedence (env > managed file > control plane > defaults), the managed file's syntax,
validation messages, and `tollhouse config show`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tollhouse.agent.cache import BundleCache
from tollhouse.agent.managed import parse_env_file, read_managed
from tollhouse.agent.settings import KEYS, SettingsError, resolve
from tollhouse.cli import app

E, M, C = "env", "managed", "control-plane"


@pytest.mark.parametrize(("env", "managed", "control", "name", "value", "source"), [
    # each layer alone
    ({}, {}, None, "enforcement", "off", "default"),
    ({}, {}, {"enforcement": "on"}, "enforcement", "on", C),
    ({}, {"TOLLHOUSE_ENFORCEMENT": "on"}, None, "enforcement", "on", M),
    ({"TOLLHOUSE_ENFORCEMENT": "on"}, {}, None, "enforcement", "on", E),
    # the higher layer wins, in both directions (a local override may also relax: a debug box)
    ({}, {"TOLLHOUSE_ENFORCEMENT": "off"}, {"enforcement": "on"}, "enforcement", "off", M),
    ({"TOLLHOUSE_ENFORCEMENT": "on"}, {"TOLLHOUSE_ENFORCEMENT": "off"}, {"enforcement": "off"}, "enforcement", "on", E),
    ({"TOLLHOUSE_CAPTURE_MODE": "telemetry"}, {}, {"capture_mode": "enterprise"}, "capture_mode", "telemetry", E),
    ({}, {}, {"capture_mode": "enterprise"}, "capture_mode", "enterprise", C),
    # an empty value is not set: the layer below shows through
    ({"TOLLHOUSE_PINNED_VERSION": ""}, {}, {"pinned_version": "v1.2.3"}, "pinned_version", "v1.2.3", C),
    ({}, {"TOLLHOUSE_PINNED_VERSION": "v2.0.0"}, {"pinned_version": "v1.2.3"}, "pinned_version", "v2.0.0", M),
    ({}, {}, None, "pinned_version", "", "default"),
    # values are canonicalised by the agent policy's validators
    ({"TOLLHOUSE_MAINTENANCE_WINDOW": "sun 02:00-04:00"}, {}, None, "maintenance_window", "Sun 02:00-04:00", E),
    ({}, {"TOLLHOUSE_UPDATE_POLICY": "AUTO"}, None, "update_policy", "auto", M),
    ({}, {}, {"update_channel": "beta"}, "update_channel", "beta", C),
    ({}, {}, {"release_index": "/srv/releases.json"}, "release_index", "/srv/releases.json", C),
    ({"TOLLHOUSE_UPSTREAM_PROXY": "http://p:3128"}, {}, {"upstream_proxy": "http://q:3128"}, "upstream_proxy",
     "http://p:3128", E),
    # local-only settings: the control plane cannot set them
    ({"TOLLHOUSE_LOG_LEVEL": "DEBUG"}, {"TOLLHOUSE_LOG_LEVEL": "error"}, None, "log_level", "debug", E),
    ({}, {}, {"log_level": "debug"}, "log_level", "info", "default"),
    ({}, {"TOLLHOUSE_USER": "alice"}, None, "user", "alice", M),
    ({"TOLLHOUSE_USER": "bob"}, {"TOLLHOUSE_USER": "alice"}, None, "user", "bob", E),
    ({}, {}, None, "user", "os-login", "default"),
    ({}, {"TOLLHOUSE_CONTROL_PLANE": "https://cp.acme.internal/"}, None, "control_plane",
     "https://cp.acme.internal", M),
    ({"TOLLHOUSE_TOKEN": "the-x"}, {"TOLLHOUSE_TOKEN": "the-y"}, None, "token", "the-x", E),
])
def test_precedence(env: dict[str, str], managed: dict[str, str], control: dict[str, Any] | None, name: str,
                    value: str, source: str) -> None:
    setting = resolve(env, managed, control, "os-login").values[name]
    assert (setting.value, setting.source.value) == (value, source)


def test_every_setting_is_resolved_and_the_policy_part_is_typed() -> None:
    eff = resolve({"TOLLHOUSE_ENFORCEMENT": "on"}, {}, {"capture_mode": "enterprise"}, "me")
    assert list(eff.values) == [k.name for k in KEYS]
    assert eff.enforcement.value == "on" and eff.capture_mode.value == "enterprise"
    assert eff.policy.update_policy.value == "notify-only"


def test_bad_values_name_the_key_the_source_and_an_example() -> None:
    with pytest.raises(SettingsError) as err:
        resolve({"TOLLHOUSE_ENFORCEMENT": "maybe"}, {"TOLLHOUSE_MAINTENANCE_WINDOW": "Sun 25:00",
                                                      "TOLLHOUSE_LOG_LEVEL": "loud"},
                {"pinned_version": "latest"}, "me", "/etc/tollhouse.env")
    problems = err.value.problems
    assert len(problems) == 4
    assert problems[0] == ('TOLLHOUSE_LOG_LEVEL (managed file /etc/tollhouse.env): \'loud\' is not one of debug, '
                           'info, warning, error, critical; example: "debug"')
    assert 'TOLLHOUSE_ENFORCEMENT (environment): "maybe" is not one of off, on; example: "off"' in problems
    assert any(p.startswith("TOLLHOUSE_MAINTENANCE_WINDOW (managed file") and "Sun 02:00-04:00" in p
               for p in problems)
    assert any(p.startswith("pinned_version (control plane's agent policy)") and "v1.2.3" in p for p in problems)


def test_a_bad_proxy_is_reported_without_its_password() -> None:
    with pytest.raises(SettingsError) as err:
        resolve({"TOLLHOUSE_UPSTREAM_PROXY": "ftp://svc:s3cret@proxy:21"}, {}, None, "me")
    assert "TOLLHOUSE_UPSTREAM_PROXY (environment)" in str(err.value) and "s3cret" not in str(err.value)


def test_the_managed_file_syntax() -> None:
    text = """
# written by tollhouse install
TOLLHOUSE_CONTROL_PLANE=https://cp.acme.internal
export TOLLHOUSE_USER = alice
TOLLHOUSE_TOKEN="the-abc \\"quoted\\" # not a comment"
TOLLHOUSE_MAINTENANCE_WINDOW='Sun 02:00-04:00'   # a comment
TOLLHOUSE_ENFORCEMENT=on # trailing comment
TOLLHOUSE_PINNED_VERSION=
TOLLHOUSE_LOG_LEVEL=info
TOLLHOUSE_LOG_LEVEL=debug
"""
    assert parse_env_file(text, "f") == {
        "TOLLHOUSE_CONTROL_PLANE": "https://cp.acme.internal", "TOLLHOUSE_USER": "alice",
        "TOLLHOUSE_TOKEN": 'the-abc "quoted" # not a comment', "TOLLHOUSE_MAINTENANCE_WINDOW": "Sun 02:00-04:00",
        "TOLLHOUSE_ENFORCEMENT": "on", "TOLLHOUSE_PINNED_VERSION": "", "TOLLHOUSE_LOG_LEVEL": "debug"}


def test_managed_file_errors_name_the_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as err:
        parse_env_file("OK=1\njust words\nA=\"open\nB='x' y\n", "/etc/tollhouse.env")
    assert err.value.problems == (
        "/etc/tollhouse.env line 2: expected KEY=VALUE, e.g. TOLLHOUSE_ENFORCEMENT=on",
        "/etc/tollhouse.env line 3: the double quote is never closed",
        "/etc/tollhouse.env line 4: unexpected text after the closing quote: 'y'")
    with pytest.raises(SettingsError, match=r"TOLLHOUSE_MANAGED_CONFIG=.*: no such file"):
        read_managed({"TOLLHOUSE_MANAGED_CONFIG": str(tmp_path / "missing.env")})


def _show(tmp_path: Path, env: dict[str, str], *args: str) -> Any:
    result = CliRunner().invoke(app, ["config", "show", "--data-dir", str(tmp_path / "data"), *args], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if "--json" in args else result.output


def test_config_show_json_gives_each_value_and_its_source(tmp_path: Path) -> None:
    managed = tmp_path / "tollhouse.env"
    managed.write_text("TOLLHOUSE_USER=alice\nTOLLHOUSE_TOKEN=the-abcdefgh12345678secret\n"
                       "TOLLHOUSE_CONTROL_PLANE=https://cp.acme.internal\nTOLLHOUSE_CAPTURE_MODE=enterprise\n")
    (tmp_path / "data").mkdir()
    BundleCache(tmp_path / "data").save({"etag": '"p1.a1.d1"', "agent_policy": {
        "version": 3, "enforcement": "on", "capture_mode": "telemetry", "update_policy": "auto",
        "upstream_proxy": "http://svc:s3cret@proxy.acme.internal:3128", "actor": "admin"}}, 1_795_000_000_000)
    env = {"TOLLHOUSE_MANAGED_CONFIG": str(managed), "TOLLHOUSE_LOG_LEVEL": "debug"}
    shown = _show(tmp_path, env, "--json")
    assert shown["log_level"] == {"value": "debug", "source": "env"}
    assert shown["capture_mode"] == {"value": "enterprise", "source": "managed"}
    assert shown["enforcement"] == {"value": "on", "source": "control-plane"}
    assert shown["update_policy"] == {"value": "auto", "source": "control-plane"}
    assert shown["user"] == {"value": "alice", "source": "managed"}
    assert shown["token"] == {"value": "the-abcdefgh***", "source": "managed"}
    assert shown["upstream_proxy"] == {"value": "http://svc:***@proxy.acme.internal:3128", "source": "control-plane"}
    assert set(shown) == {k.name for k in KEYS}
    assert all(set(v) == {"value", "source"} for v in shown.values())
    text = _show(tmp_path, env)
    assert "s3cret" not in text and "secret" not in text.replace("***", "")
    assert "enforcement" in text and "control-plane" in text


def test_config_show_without_a_cache_or_file_shows_defaults(tmp_path: Path) -> None:
    (tmp_path / "empty.env").write_text("")
    shown = _show(tmp_path, {"TOLLHOUSE_MANAGED_CONFIG": str(tmp_path / "empty.env")}, "--json")
    assert shown["enforcement"] == {"value": "off", "source": "default"}
    assert shown["pinned_version"] == {"value": "", "source": "default"}


def test_config_show_reports_a_bad_setting_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "empty.env").write_text("")
    result = CliRunner().invoke(app, ["config", "show", "--data-dir", str(tmp_path)],
                                env={"TOLLHOUSE_ENFORCEMENT": "sometimes",
                                     "TOLLHOUSE_MANAGED_CONFIG": str(tmp_path / "empty.env")})
    assert result.exit_code == 2
    assert "TOLLHOUSE_ENFORCEMENT (environment)" in result.output and "Traceback" not in result.output
