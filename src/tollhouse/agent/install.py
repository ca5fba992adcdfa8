"""`tollhouse install` / `tollhouse uninstall`: the managed file, the service definitions and the data directory.

Idempotent: a file whose content would not change is not rewritten, so running install twice leaves the
same files with the same result; re-running it (after upgrading the package) is how an upgrade is applied.
Settings install was not told to change are kept from the managed file already there. Install never
starts a service unless asked to (`enable_service`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tollhouse.agent.managed_env import ManagedEnvError, merge_env, parse_env
from tollhouse.agent.service_files import UNIT_NAME, ServiceSpec, launchd_plist, systemd_unit
from tollhouse.forward import install as forward_install

DEFAULT_PORT = 8788
CONTROL_PLANE, TOKEN, USER = "TOLLHOUSE_CONTROL_PLANE", "TOLLHOUSE_TOKEN", "TOLLHOUSE_USER"
DATA_DIR, PORT = "TOLLHOUSE_DATA_DIR", "TOLLHOUSE_PORT"
FORWARD_PROXY_PORT = "TOLLHOUSE_FORWARD_PROXY_PORT"


Runner = Callable[[Sequence[str]], int]  # runs a command, returns its exit code


class InstallError(Exception):
    """Install or uninstall cannot go on; the message says why and what to do instead."""


@dataclass(frozen=True, slots=True)
class Layout:
    """Where install writes: under `/` for a system install, under `prefix` for a non-root one."""

    prefix: Path | None = None

    @property
    def root(self) -> Path:
        return self.prefix.resolve() if self.prefix is not None else Path("/")

    @property
    def managed_file(self) -> Path:
        return self.root / "etc" / "tollhouse.env"

    @property
    def unit(self) -> Path:
        return self.root / "etc" / "systemd" / "system" / UNIT_NAME

    @property
    def plist(self) -> Path:
        return self.root / "Library" / "LaunchDaemons" / "com.tollhouse.agent.plist"

    @property
    def default_data_dir(self) -> Path:
        return self.root / "var" / "lib" / "tollhouse"


@dataclass(frozen=True, slots=True)
class InstallOptions:
    control_plane: str | None = None
    token: str | None = None
    user: str | None = None
    data_dir: Path | None = None
    port: int | None = None
    prefix: Path | None = None
    python: str = sys.executable
    forward_proxy: bool = False  # also run the CONNECT proxy and send the machine's tools through it
    forward_proxy_port: int | None = None


@dataclass(frozen=True, slots=True)
class FileChange:
    path: Path
    action: str  # created | updated | unchanged | removed | absent | kept


@dataclass(frozen=True, slots=True)
class InstallResult:
    layout: Layout
    settings: dict[str, str]  # the managed file's values after install
    changes: list[FileChange]
    notes: list[str] = field(default_factory=list)
    proxy_env: dict[str, str] = field(default_factory=dict)  # install --forward-proxy: the tools' environment

    @property
    def port(self) -> int:
        return int(self.settings[PORT])

    def tool_exports(self) -> list[str]:
        base = f"http://127.0.0.1:{self.port}"
        return [f"export OPENAI_BASE_URL={base}/openai/v1", f"export ANTHROPIC_BASE_URL={base}/anthropic",
                *(f"export {k}={v}" for k, v in self.proxy_env.items())]


def _need_root(layout: Layout, is_root: bool) -> None:
    if layout.prefix is None and not is_root:
        raise InstallError(f"writing {layout.managed_file} and {layout.unit.parent} needs root: run it with sudo, "
                           "or install for your account only with --prefix DIR (e.g. --prefix ~/.local/tollhouse)")


def _check(opts: InstallOptions) -> None:
    if opts.control_plane is not None:
        parts = urlsplit(opts.control_plane)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InstallError(f"--control-plane {opts.control_plane!r} is not an http(s):// URL; "
                               "example: https://tollhouse.example.com")
    if opts.port is not None and not 1 <= opts.port <= 65535:
        raise InstallError(f"--port {opts.port} is not a port number (1..65535)")
    if opts.forward_proxy_port is not None and not 1 <= opts.forward_proxy_port <= 65535:
        raise InstallError(f"--forward-proxy-port {opts.forward_proxy_port} is not a port number (1..65535)")
    if opts.user is not None and (not opts.user or any(c.isspace() for c in opts.user)):
        raise InstallError(f"--user {opts.user!r} is not an account name")


def _read_managed(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise InstallError(f"cannot read {path}: {exc.strerror or exc}") from None


def _write(path: Path, content: bytes, mode: int) -> FileChange:
    """Write `content` atomically with `mode`, unless the file already holds exactly that."""
    try:
        old: bytes | None = path.read_bytes()
    except FileNotFoundError:
        old = None
    try:
        if old == content:
            os.chmod(path, mode)
            return FileChange(path, "unchanged")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise InstallError(f"cannot write {path}: {exc.strerror or exc}") from None
    return FileChange(path, "created" if old is None else "updated")


def _settings(opts: InstallOptions, layout: Layout, existing: dict[str, str]) -> dict[str, str]:
    """The managed values install sets: what it was told, else what the file holds, else the defaults."""
    told = {CONTROL_PLANE: opts.control_plane, TOKEN: opts.token, USER: opts.user,
            DATA_DIR: str(opts.data_dir.resolve()) if opts.data_dir is not None else None,
            PORT: str(opts.port) if opts.port is not None else None,
            FORWARD_PROXY_PORT: (str(opts.forward_proxy_port or forward_install.DEFAULT_PORT)
                                 if opts.forward_proxy or opts.forward_proxy_port else None)}
    defaults = {DATA_DIR: str(layout.default_data_dir), PORT: str(DEFAULT_PORT)}
    out: dict[str, str] = {}
    for key, value in told.items():
        chosen = value if value is not None else existing.get(key, defaults.get(key))
        if chosen is not None:
            out[key] = chosen
    try:
        int(out[PORT])
    except ValueError:
        raise InstallError(f"{layout.managed_file}: {PORT}={out[PORT]!r} is not a port number; "
                           "pass --port to replace it") from None
    return out


def _make_data_dir(path: Path, user: str | None, chown: bool) -> tuple[FileChange, list[str]]:
    existed = path.is_dir()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise InstallError(f"cannot create the data directory {path}: {exc.strerror or exc}") from None
    notes: list[str] = []
    if user and chown:
        try:
            account = pwd.getpwnam(user)
        except KeyError:
            notes.append(f"no account {user!r} on this machine: {path} stays owned by root, and the service "
                         "manager will refuse to start the agent as that user until the account exists")
        else:
            os.chown(path, account.pw_uid, account.pw_gid)
    return FileChange(path, "kept" if existed else "created"), notes


def install(opts: InstallOptions, *, is_root: bool) -> InstallResult:
    _check(opts)
    layout = Layout(opts.prefix)
    _need_root(layout, is_root)
    text = _read_managed(layout.managed_file)
    try:
        existing = parse_env(text, str(layout.managed_file))
        settings = _settings(opts, layout, existing)
        managed = merge_env(text, settings)
    except ManagedEnvError as exc:
        raise InstallError(str(exc)) from None
    data_dir = Path(settings[DATA_DIR])
    user = settings.get(USER)
    spec = ServiceSpec(opts.python, layout.managed_file, data_dir, user if user != "root" else None)
    data_change, notes = _make_data_dir(data_dir, user, chown=is_root and layout.prefix is None)
    changes = [
        _write(layout.managed_file, managed.encode(), 0o600),
        _write(layout.unit, systemd_unit(spec).encode(), 0o644),
        _write(layout.plist, launchd_plist(spec), 0o644),
        data_change,
    ]
    proxy_env: dict[str, str] = {}
    if FORWARD_PROXY_PORT in settings:
        written: list[FileChange] = []
        try:
            proxy_env, proxy_notes = forward_install.install_forward_proxy(
                layout.root, data_dir, int(settings[FORWARD_PROXY_PORT]), user, is_root and layout.prefix is None,
                lambda path, content, mode: written.append(_write(path, content, mode)))
        except forward_install.CAError as exc:
            raise InstallError(str(exc)) from None
        except ValueError:
            raise InstallError(f"{layout.managed_file}: {FORWARD_PROXY_PORT}={settings[FORWARD_PROXY_PORT]!r} is "
                               "not a port number; pass --forward-proxy-port to replace it") from None
        changes += written
        notes += proxy_notes
    if CONTROL_PLANE not in settings or TOKEN not in settings:
        notes.append("no control plane and token set: the agent will run on the managed file and built-in "
                     "defaults (re-run with --control-plane URL --token T to connect it)")
    return InstallResult(layout, parse_env(managed), changes, notes, proxy_env)


def _remove(path: Path) -> FileChange:
    try:
        path.unlink()
    except FileNotFoundError:
        return FileChange(path, "absent")
    except OSError as exc:
        raise InstallError(f"cannot remove {path}: {exc.strerror or exc}") from None
    return FileChange(path, "removed")


def uninstall(prefix: Path | None, *, purge: bool, is_root: bool, systemctl: Runner | None = None) -> list[FileChange]:
    """Remove what install wrote; the data directory (spooled events, cached policy) only with `purge`.

    With `systemctl` (systemd is running) a system install's unit is stopped and disabled first."""
    layout = Layout(prefix)
    _need_root(layout, is_root)
    try:
        existing = parse_env(_read_managed(layout.managed_file), str(layout.managed_file))
    except ManagedEnvError:
        existing = {}
    data_dir = Path(existing.get(DATA_DIR, str(layout.default_data_dir)))
    managed_by_systemd = systemctl is not None and prefix is None and layout.unit.exists()
    if managed_by_systemd and systemctl is not None:
        systemctl(["systemctl", "disable", "--now", UNIT_NAME])
    changes = [_remove(layout.managed_file), _remove(layout.unit), _remove(layout.plist),
               *(_remove(path) for path in forward_install.ProxyFiles(layout.root).all() if path.exists())]
    if managed_by_systemd and systemctl is not None:
        systemctl(["systemctl", "daemon-reload"])
    if not purge:
        changes.append(FileChange(data_dir, "kept" if data_dir.exists() else "absent"))
    elif data_dir.is_dir():
        shutil.rmtree(data_dir)
        changes.append(FileChange(data_dir, "removed"))
    else:
        changes.append(FileChange(data_dir, "absent"))
    return changes


def run_command(argv: Sequence[str]) -> int:
    return subprocess.run(list(argv), check=False).returncode


def systemd_present() -> bool:
    """Is this machine booted with systemd (the check `sd_booted()` makes)?"""
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def check_enable(layout: Layout) -> None:
    if layout.prefix is not None:
        raise InstallError("--enable needs a system install (no --prefix): systemd only loads units from "
                           f"/etc/systemd/system; the unit is at {layout.unit}")


def enable_service(layout: Layout, *, systemd: bool, run: Runner = run_command) -> list[str]:
    """`systemctl daemon-reload && systemctl enable --now` the agent; lines saying what happened."""
    check_enable(layout)
    if not systemd:
        how = (f"sudo launchctl bootstrap system {layout.plist}" if sys.platform == "darwin"
               else f"{sys.executable} -m tollhouse agent (with the values in {layout.managed_file})")
        return [f"systemd is not running on this machine: the agent was not started; start it with: {how}"]
    for argv in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", UNIT_NAME]):
        code = run(argv)
        if code != 0:
            raise InstallError(f"`{' '.join(argv)}` failed (exit {code}); see `journalctl -u {UNIT_NAME}`")
    return [f"enabled and started {UNIT_NAME} (status: systemctl status {UNIT_NAME})"]

