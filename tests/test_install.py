"""`tollhouse install` / `uninstall`: idempotent, prefix installs, file contents, kept values, purge, errors."""

from __future__ import annotations

import os
import plistlib
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from tollhouse.agent.install import (
    InstallError,
    InstallOptions,
    Layout,
    enable_service,
    install,
    uninstall,
)
from tollhouse.agent.managed_env import ManagedEnvError, merge_env, parse_env

CP = "https://cp.example.com"


def _opts(prefix: Path, **kw: object) -> InstallOptions:
    return InstallOptions(prefix=prefix, python="/opt/tollhouse/bin/python", **kw)  # type: ignore[arg-type]


def _snapshot(root: Path) -> dict[str, tuple[bytes, int, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_prefix_install_writes_every_file(tmp_path: Path) -> None:
    result = install(_opts(tmp_path, control_plane=CP, token="tok-1", user="alice"), is_root=False)
    layout = Layout(tmp_path)
    assert layout.managed_file == tmp_path.resolve() / "etc" / "tollhouse.env"
    assert parse_env(layout.managed_file.read_text()) == {
        "TOLLHOUSE_CONTROL_PLANE": CP, "TOLLHOUSE_TOKEN": "tok-1", "TOLLHOUSE_USER": "alice",
        "TOLLHOUSE_DATA_DIR": str(tmp_path.resolve() / "var" / "lib" / "tollhouse"), "TOLLHOUSE_PORT": "8788"}
    assert stat.S_IMODE(layout.managed_file.stat().st_mode) == 0o600
    unit = layout.unit.read_text()
    assert layout.unit == tmp_path.resolve() / "etc/systemd/system/tollhouse-agent.service"
    assert "EnvironmentFile=" not in unit  # the agent reads the file itself: `config show` says "managed"
    for line in (f"Environment=TOLLHOUSE_MANAGED_CONFIG={layout.managed_file}",
                 "ExecStart=/opt/tollhouse/bin/python -m tollhouse agent", "Restart=always", "User=alice",
                 "WantedBy=multi-user.target"):
        assert line in unit.splitlines()
    plist = plistlib.loads(layout.plist.read_bytes())
    assert layout.plist == tmp_path.resolve() / "Library/LaunchDaemons/com.tollhouse.agent.plist"
    assert plist["Label"] == "com.tollhouse.agent"
    assert plist["ProgramArguments"] == ["/opt/tollhouse/bin/python", "-m", "tollhouse", "agent"]
    assert plist["UserName"] == "alice" and plist["KeepAlive"] is True and plist["RunAtLoad"] is True
    assert plist["EnvironmentVariables"] == {"TOLLHOUSE_MANAGED_CONFIG": str(layout.managed_file)}
    assert (tmp_path / "var" / "lib" / "tollhouse").is_dir()
    assert [c.action for c in result.changes] == ["created"] * 4
    assert result.tool_exports() == ["export OPENAI_BASE_URL=http://127.0.0.1:8788/openai/v1",
                                     "export ANTHROPIC_BASE_URL=http://127.0.0.1:8788/anthropic"]
    assert result.notes == []


def test_install_is_idempotent(tmp_path: Path) -> None:
    opts = _opts(tmp_path, control_plane=CP, token="tok-1", user="alice", port=9001)
    first = install(opts, is_root=False)
    before = _snapshot(tmp_path)
    second = install(opts, is_root=False)
    assert _snapshot(tmp_path) == before  # same bytes, modes, and not even rewritten
    assert [c.action for c in second.changes] == ["unchanged", "unchanged", "unchanged", "kept"]
    assert second.settings == first.settings


def test_rerun_keeps_values_it_was_not_told_to_change(tmp_path: Path) -> None:
    install(_opts(tmp_path, control_plane=CP, token="tok-1", user="alice", port=9001), is_root=False)
    managed = Layout(tmp_path).managed_file
    managed.write_text("# pushed by MDM\n" + managed.read_text() + "TOLLHOUSE_LOG_LEVEL=debug\n")
    result = install(_opts(tmp_path, control_plane="https://cp2.example.com"), is_root=False)
    values = parse_env(managed.read_text())
    assert values["TOLLHOUSE_TOKEN"] == "tok-1" and values["TOLLHOUSE_USER"] == "alice"
    assert values["TOLLHOUSE_PORT"] == "9001" and values["TOLLHOUSE_LOG_LEVEL"] == "debug"
    assert values["TOLLHOUSE_CONTROL_PLANE"] == "https://cp2.example.com"
    assert managed.read_text().startswith("# pushed by MDM\n")
    assert result.port == 9001 and [c.action for c in result.changes][:2] == ["updated", "unchanged"]


def test_explicit_data_dir_and_no_user(tmp_path: Path) -> None:
    data = tmp_path / "elsewhere"
    result = install(_opts(tmp_path / "p", data_dir=data), is_root=False)
    assert Path(result.settings["TOLLHOUSE_DATA_DIR"]) == data.resolve() and data.is_dir()
    layout = Layout(tmp_path / "p")
    assert "User=" not in layout.unit.read_text()
    assert "UserName" not in plistlib.loads(layout.plist.read_bytes())
    assert any("no control plane" in n for n in result.notes)


def test_uninstall_removes_what_install_wrote_and_keeps_data(tmp_path: Path) -> None:
    install(_opts(tmp_path, control_plane=CP, token="t"), is_root=False)
    data = tmp_path / "var" / "lib" / "tollhouse"
    (data / "spool.db").write_text("events")
    changes = uninstall(tmp_path, purge=False, is_root=False)
    assert [c.action for c in changes] == ["removed", "removed", "removed", "kept"]
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and data not in p.parents]
    assert (data / "spool.db").read_text() == "events"
    assert [c.action for c in uninstall(tmp_path, purge=False, is_root=False)] == ["absent"] * 3 + ["kept"]


def test_uninstall_purge_removes_the_data_dir_install_recorded(tmp_path: Path) -> None:
    data = tmp_path / "data"
    install(_opts(tmp_path / "p", data_dir=data), is_root=False)
    (data / "cache.json").write_text("{}")
    changes = uninstall(tmp_path / "p", purge=True, is_root=False)
    assert changes[-1].path == data.resolve() and changes[-1].action == "removed"
    assert not data.exists()


def test_system_install_without_root_is_a_clear_error() -> None:
    with pytest.raises(InstallError, match=r"needs root: run it with sudo, or .* --prefix"):
        install(InstallOptions(control_plane=CP, token="t"), is_root=False)
    with pytest.raises(InstallError, match="--prefix"):
        uninstall(None, purge=False, is_root=False)


@pytest.mark.parametrize(("opts", "message"), [
    ({"control_plane": "cp.example.com"}, "is not an http(s):// URL"),
    ({"port": 70000}, "is not a port number"),
    ({"user": "al ice"}, "is not an account name"),
])
def test_bad_options_are_named(tmp_path: Path, opts: dict[str, object], message: str) -> None:
    with pytest.raises(InstallError, match=message.replace("(", r"\(").replace(")", r"\)")):
        install(_opts(tmp_path, **opts), is_root=False)
    assert not list(tmp_path.iterdir())


def test_a_broken_managed_file_is_named(tmp_path: Path) -> None:
    managed = Layout(tmp_path).managed_file
    managed.parent.mkdir(parents=True)
    managed.write_text("TOLLHOUSE_PORT=8788\nthis is not a setting\n")
    with pytest.raises(InstallError, match=rf"{managed} line 2: expected KEY=VALUE"):
        install(_opts(tmp_path), is_root=False)


def test_enable_runs_systemctl_only_for_a_system_install_with_systemd() -> None:
    calls: list[list[str]] = []

    def run(argv: Sequence[str]) -> int:
        calls.append(list(argv))
        return 0

    lines = enable_service(Layout(None), systemd=True, run=run)
    assert calls == [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", "tollhouse-agent.service"]]
    assert "enabled and started" in lines[0]
    calls.clear()
    assert "systemd is not running" in enable_service(Layout(None), systemd=False, run=run)[0]
    assert calls == []
    with pytest.raises(InstallError, match="--enable needs a system install"):
        enable_service(Layout(Path("/tmp/x")), systemd=True, run=run)
    with pytest.raises(InstallError, match=r"`systemctl daemon-reload` failed \(exit 1\)"):
        enable_service(Layout(None), systemd=True, run=lambda argv: 1)


def test_managed_env_quoting_round_trips() -> None:
    text = merge_env("", {"A": "plain-value_1", "B": 'has space and "quotes" \\ slash', "C": ""})
    assert parse_env(text) == {"A": "plain-value_1", "B": 'has space and "quotes" \\ slash', "C": ""}
    assert parse_env("X='single $quoted'\n; comment\nexport Y=1\n") == {"X": "single $quoted", "Y": "1"}
    with pytest.raises(ManagedEnvError, match="line break"):
        merge_env("", {"A": "two\nlines"})


def test_cli_install_and_uninstall(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "tollhouse"]
    out = subprocess.run([*cmd, "install", "--prefix", str(tmp_path), "--control-plane", CP, "--token", "t",
                          "--port", "8790"], env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "export OPENAI_BASE_URL=http://127.0.0.1:8790/openai/v1" in out.stdout
    assert "export ANTHROPIC_BASE_URL=http://127.0.0.1:8790/anthropic" in out.stdout
    assert "created" in out.stdout and "not started" in out.stdout
    bad = subprocess.run([*cmd, "install", "--prefix", str(tmp_path), "--enable"], env=env,
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 1 and "tollhouse: --enable needs a system install" in bad.stderr
    assert "Traceback" not in bad.stderr
    gone = subprocess.run([*cmd, "uninstall", "--prefix", str(tmp_path), "--purge"], env=env,
                          capture_output=True, text=True, check=False)
    assert gone.returncode == 0 and "removed" in gone.stdout
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
