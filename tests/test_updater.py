"""The agent updater: the release index format, the pure decision (tables and properties), the I/O wrapper."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import http.server
import json
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connect_proxy import ConnectProxy
from tollhouse.agent.releases import Release, ReleaseIndexError, from_pep440, parse_release_index, to_pep440
from tollhouse.agent.update_decision import UpdateAction, decide
from tollhouse.agent.updater import AVAILABLE, Updater, pip_command, pip_environment, running_version
from tollhouse.control.agent_policy import AgentPolicy
from tollhouse.control.version import Version, parse_version
from tollhouse.control.window import MaintenanceWindow

SUN_0300 = datetime(2024, 1, 7, 3, 0)  # a Sunday, inside "Sun 02:00-04:00"
MON_1200 = datetime(2024, 1, 8, 12, 0)  # outside it


def policy(update: str = "auto", channel: str = "stable", window: str = "", pin: str = "",
           index: str = "/srv/releases.json") -> AgentPolicy:
    return AgentPolicy.model_validate({"update_policy": update, "update_channel": channel,
                                       "maintenance_window": window, "pinned_version": pin,
                                       "release_index": index})


def rel(version: str) -> Release:
    v = parse_version(version)
    return Release(v, f"tollhouse=={to_pep440(v)}")


RELEASES = [rel(v) for v in ("v0.1.0", "v0.2.0", "v0.3.0-beta.1", "v0.0.9")]
A, T, W, N, D, H = (UpdateAction.install_now, UpdateAction.notify, UpdateAction.wait_for_window,
                    UpdateAction.none, UpdateAction.disabled, UpdateAction.pinned_hold)


# update_policy, channel, window, pin, current, now -> action, target, notice
@pytest.mark.parametrize(("update", "channel", "window", "pin", "current", "now", "action", "target", "notice"), [
    # auto: the window decides when
    ("auto", "stable", "", "", "v0.1.0", MON_1200, A, "v0.2.0", False),
    ("auto", "stable", "Sun 02:00-04:00", "", "v0.1.0", SUN_0300, A, "v0.2.0", False),
    ("auto", "stable", "Sun 02:00-04:00", "", "v0.1.0", MON_1200, W, "v0.2.0", False),
    ("auto", "stable", "Any 23:00-02:00", "", "v0.1.0", datetime(2024, 1, 9, 1, 30), A, "v0.2.0", False),
    ("auto", "stable", "Any 23:00-02:00", "", "v0.1.0", datetime(2024, 1, 9, 2, 0), W, "v0.2.0", False),
    # channel: stable ignores betas, beta takes both
    ("auto", "beta", "", "", "v0.1.0", MON_1200, A, "v0.3.0-beta.1", False),
    ("auto", "stable", "", "", "v0.2.0", MON_1200, N, None, False),
    ("auto", "beta", "", "", "v0.3.0-beta.1", MON_1200, N, None, False),
    ("auto", "stable", "", "", "v0.3.0-beta.1", MON_1200, N, None, False),  # never down without a pin
    ("auto", "stable", "", "", "v0.5.0", MON_1200, N, None, False),
    # notify-only and manual never install; manual asks for a notice
    ("notify-only", "stable", "", "", "v0.1.0", MON_1200, T, "v0.2.0", False),
    ("notify-only", "stable", "Sun 02:00-04:00", "", "v0.1.0", SUN_0300, T, "v0.2.0", False),
    ("manual", "stable", "", "", "v0.1.0", MON_1200, T, "v0.2.0", True),
    ("manual", "beta", "Sun 02:00-04:00", "", "v0.1.0", SUN_0300, T, "v0.3.0-beta.1", True),
    ("manual", "stable", "", "", "v0.2.0", MON_1200, N, None, False),
    # disabled decides nothing at all
    ("disabled", "stable", "", "", "v0.1.0", MON_1200, D, None, False),
    ("disabled", "beta", "", "v0.0.9", "v0.1.0", MON_1200, D, None, False),
    # pins: exactly the pin, up or down, whatever the channel; at the pin nothing moves
    ("auto", "stable", "", "v0.2.0", "v0.1.0", MON_1200, A, "v0.2.0", False),
    ("auto", "beta", "", "v0.1.0", "v0.2.0", MON_1200, A, "v0.1.0", False),  # downgrade
    ("auto", "stable", "", "v0.3.0-beta.1", "v0.1.0", MON_1200, A, "v0.3.0-beta.1", False),
    ("auto", "stable", "Sun 02:00-04:00", "v0.0.9", "v0.2.0", MON_1200, W, "v0.0.9", False),
    ("auto", "beta", "", "v0.1.0", "v0.1.0", MON_1200, N, None, False),
    ("notify-only", "stable", "", "v0.0.9", "v0.1.0", MON_1200, T, "v0.0.9", False),
    ("manual", "stable", "", "v0.0.9", "v0.1.0", MON_1200, T, "v0.0.9", True),
    ("auto", "stable", "", "v9.9.9", "v0.1.0", MON_1200, H, None, False),  # pin not in the index: hold
    ("manual", "beta", "", "v9.9.9", "v0.1.0", MON_1200, H, None, False),
])
def test_decision_table(update: str, channel: str, window: str, pin: str, current: str, now: datetime,
                        action: UpdateAction, target: str | None, notice: bool) -> None:
    d = decide(policy(update, channel, window, pin), parse_version(current), RELEASES, now)
    assert (d.action, str(d.target.version) if d.target else None, d.notice) == (action, target, notice), d.reason
    assert d.reason


def test_decision_reasons_say_what_and_when() -> None:
    wait = decide(policy(window="Sun 02:00-04:00"), parse_version("v0.1.0"), RELEASES, MON_1200)
    assert wait.next_start == datetime(2024, 1, 14, 2, 0)
    assert wait.reason == ("update v0.1.0 -> v0.2.0: waiting for the maintenance window Sun 02:00-04:00 "
                           "(opens 2024-01-14T02:00)")
    hold = decide(policy(pin="v9.9.9"), parse_version("v0.1.0"), RELEASES, MON_1200)
    assert hold.reason == "pinned to v9.9.9, which the release index does not list: staying on v0.1.0"
    down = decide(policy(update="notify-only", pin="v0.0.9"), parse_version("v0.1.0"), RELEASES, MON_1200)
    assert down.reason.startswith("downgrade v0.1.0 -> v0.0.9 (pinned) available")
    assert decide(policy(), parse_version("v0.1.0"), [], MON_1200).reason == (
        "up to date: v0.1.0 on the stable channel (no release)")


# -- properties ------------------------------------------------------------------------------------------------

versions = st.builds(Version, st.integers(0, 2), st.integers(0, 2), st.integers(0, 2),
                     st.one_of(st.none(), st.integers(0, 2)))
windows = st.one_of(st.none(), st.tuples(st.one_of(st.none(), st.integers(1, 7)), st.integers(0, 1439),
                                          st.integers(0, 1439)).filter(lambda t: t[1] != t[2])
                    .map(lambda t: MaintenanceWindow(*t)))
moments = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2024, 12, 31))


@settings(max_examples=400, deadline=None)
@given(update=st.sampled_from(["auto", "notify-only", "manual", "disabled"]),
       channel=st.sampled_from(["stable", "beta"]), window=windows, pin=st.one_of(st.none(), versions),
       current=versions, listed=st.sets(versions, max_size=6), now=moments)
def test_decide_properties(update: str, channel: str, window: MaintenanceWindow | None, pin: Version | None,
                           current: Version, listed: set[Version], now: datetime) -> None:
    p = policy(update, channel, str(window) if window else "", str(pin) if pin else "")
    d = decide(p, current, [Release(v, "x") for v in listed], now)
    if update == "disabled":
        assert d.action is UpdateAction.disabled
        return
    # never installs outside the window; a wait names the window's next opening
    if d.action is UpdateAction.install_now:
        assert window is None or window.contains(now)
        assert update == "auto"
    if d.action is UpdateAction.wait_for_window:
        assert window is not None and not window.contains(now) and update == "auto"
        assert d.next_start is not None and d.next_start >= now and window.contains(d.next_start)
        assert d.next_start - now < timedelta(days=7, minutes=1)
    # only auto installs or waits; only manual asks for a notice
    if update != "auto":
        assert d.action not in (UpdateAction.install_now, UpdateAction.wait_for_window)
    assert d.notice == (update == "manual" and d.action is UpdateAction.notify)
    if pin is not None:
        # never moves away from a pin: the only target is the pin itself, and at the pin nothing moves
        assert d.target is None or d.target.version == pin
        assert (d.target is not None) == (current != pin and pin in listed)
        assert d.action is not UpdateAction.pinned_hold or (pin not in listed and current != pin)
    else:
        # without a pin: only up, never a beta on stable, and the newest eligible release
        eligible = [v for v in listed if channel == "beta" or not v.is_beta]
        assert d.target is None or d.target.version == max(eligible) > current
        assert d.target is None or channel == "beta" or not d.target.version.is_beta
        assert (d.target is None) == (not eligible or max(eligible) <= current)


# -- the release index -----------------------------------------------------------------------------------------

def test_index_parsing_defaults_and_relative_locations() -> None:
    raw = json.dumps({"index_url": "simple/", "releases": [
        {"version": "v0.2.0", "channel": "stable", "requirement": "tollhouse==0.2.0", "published": "2026-01-10"},
        {"version": "v0.3.0-beta.1", "find_links": "/srv/wheels", "no_index": True},
    ]}).encode()
    got = parse_release_index(raw, "https://releases.example.com/tollhouse/index.json")
    assert got == [
        Release(parse_version("v0.2.0"), "tollhouse==0.2.0", "https://releases.example.com/tollhouse/simple/",
                None, False, "2026-01-10"),
        Release(parse_version("v0.3.0-beta.1"), "tollhouse==0.3.0b1",
                "https://releases.example.com/tollhouse/simple/", "/srv/wheels", True, None),
    ]
    assert got[1].channel == "beta"
    local = parse_release_index(b'{"releases": [{"version": "v1.0.0", "find_links": "wheels"}]}', "/srv/r/i.json")
    assert local[0].find_links == "/srv/r/wheels"


@pytest.mark.parametrize(("doc", "problems"), [
    (b"{not json", ["not JSON"]),
    (b'[{"version": "v1.0.0"}]', ['expected an object with a "releases" list; example: {"releases"']),
    (b'{"releases": [{"version": "1.0"}]}', ['releases[0].version: "1.0" is not vN.M.K or vN.M.K-beta.X']),
    (b'{"releases": [{"requirement": "x"}]}', ['releases[0].version: missing; example: "v0.2.0"']),
    (b'{"releases": ["v1.0.0"]}', ['releases[0]: expected an object such as {"version": "v0.2.0"}']),
    (b'{"releases": [{"version": "v1.0.0-beta.1", "channel": "stable"}]}',
     ["releases[0].channel: 'stable' does not match version v1.0.0-beta.1 (a beta release)"]),
    (b'{"releases": [{"version": "v1.0.0", "requirment": "x"}]}', ["releases[0].requirment: unknown field"]),
    (b'{"releases": [{"version": "v1.0.0"}, {"version": "v1.0.0"}]}', ["releases[1].version: v1.0.0 is listed twice"]),
    (b'{"no_index": "yes", "releases": [{"version": "v1.0.0", "index_url": 3}]}',
     ['no_index: "yes" is not true or false', "releases[0].index_url: 3 is not a non-empty string"]),
])
def test_index_errors_are_named(doc: bytes, problems: list[str]) -> None:
    with pytest.raises(ReleaseIndexError) as exc:
        parse_release_index(doc, "https://user:secret@releases.example.com/i.json")
    lines = str(exc.value).splitlines()
    assert len(lines) == len(problems)
    for line, problem in zip(lines, problems, strict=True):
        assert line.startswith("release index https://user:***@releases.example.com/i.json: " + problem), line


def test_pep440_round_trip() -> None:
    assert from_pep440("0.2.0b3") == parse_version("v0.2.0-beta.3")
    assert to_pep440(parse_version("v1.2.3")) == "1.2.3"
    assert running_version() == parse_version("v0.1.0")


def test_pip_command_and_environment() -> None:
    r = Release(parse_version("v0.2.0"), "tollhouse==0.2.0", "http://idx/simple/", "http://idx/wheels/", True)
    assert pip_command("/venv/bin/python", r, "http://proxy:3128") == [
        "/venv/bin/python", "-m", "pip", "install", "--upgrade", "--disable-pip-version-check", "--no-input",
        "--index-url", "http://idx/simple/", "--find-links", "http://idx/wheels/", "--no-index",
        "--proxy", "http://proxy:3128", "tollhouse==0.2.0"]
    assert pip_command("py", Release(parse_version("v0.2.0"), "t==0.2.0"), None)[-1] == "t==0.2.0"
    env = pip_environment({"PATH": "/bin", "HTTPS_PROXY": "x", "no_proxy": "y", "PIP_PROXY": "z", "HOME": "/h"})
    assert env == {"PATH": "/bin", "HOME": "/h"}


# -- the updater without installing ------------------------------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.notices: list[tuple[str, dict[str, Any]]] = []
        self.restarts = 0

    def notice(self, kind: str, data: dict[str, Any]) -> None:
        self.notices.append((kind, data))

    def restart(self) -> None:
        self.restarts += 1


def _updater(rec: Recorder, current: str = "v0.1.0") -> Updater:
    return Updater("/nonexistent/python", parse_version(current), None, rec.notice, rec.restart)


def test_manual_sends_one_notice_per_version_and_status_shows_it(tmp_path: Path) -> None:
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"releases": [{"version": "v0.2.0"}]}))
    rec = Recorder()
    up = _updater(rec)
    assert up.status()["reason"] == "not checked yet"
    p = policy("manual", index=str(index))
    for _ in range(3):
        assert asyncio.run(up.check_once(p, MON_1200)).action is UpdateAction.notify
    assert [k for k, _ in rec.notices] == [AVAILABLE]
    assert rec.notices[0][1] == {"current": "v0.1.0", "target": "v0.2.0", "channel": "stable",
                                 "update_policy": "manual", "pinned_version": None,
                                 "reason": rec.notices[0][1]["reason"]}
    status = up.status()
    assert status["update_available"] == "v0.2.0" and status["action"] == "notify"
    assert status["last_error"] is None and rec.restarts == 0
    index.write_text(json.dumps({"releases": [{"version": "v0.2.0"}, {"version": "v0.3.0"}]}))
    asyncio.run(up.check_once(p, MON_1200))
    assert [d["target"] for _, d in rec.notices] == ["v0.2.0", "v0.3.0"]


def test_notify_only_sends_no_notice_and_disabled_reads_nothing(tmp_path: Path) -> None:
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"releases": [{"version": "v0.2.0"}]}))
    rec = Recorder()
    up = _updater(rec)
    assert asyncio.run(up.check_once(policy("notify-only", index=str(index)), MON_1200)).action is UpdateAction.notify
    assert up.status()["update_available"] == "v0.2.0"
    index.unlink()  # disabled does not even look
    assert asyncio.run(up.check_once(policy("disabled", index=str(index)), MON_1200)).action is UpdateAction.disabled
    assert rec.notices == [] and up.status()["update_available"] is None


def test_wait_for_window_status(tmp_path: Path) -> None:
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"releases": [{"version": "v0.2.0"}]}))
    up = _updater(Recorder())
    d = asyncio.run(up.check_once(policy(window="Sun 02:00-04:00", index=f"file://{index}"), MON_1200))
    assert d.action is UpdateAction.wait_for_window
    assert up.status()["next_window"] == "2024-01-14T02:00" and up.status()["update_available"] == "v0.2.0"


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot be read: No such file or directory"),
    ('{"releases": [{"version": "latest"}]}', 'releases[0].version: "latest" is not vN.M.K'),
])
def test_index_problems_become_an_error_decision_not_an_exception(tmp_path: Path, content: str | None,
                                                                   message: str) -> None:
    index = tmp_path / "index.json"
    if content is not None:
        index.write_text(content)
    rec = Recorder()
    up = _updater(rec)
    d = asyncio.run(up.check_once(policy(index=str(index)), MON_1200))
    assert d.action is UpdateAction.error and message in d.reason and str(index) in d.reason
    assert message in up.status()["last_error"] and rec.restarts == 0


def test_unreachable_http_index_is_an_error_decision() -> None:
    up = _updater(Recorder())
    d = asyncio.run(up.check_once(policy(index="http://127.0.0.1:9/index.json"), MON_1200))
    assert d.action is UpdateAction.error and "http://127.0.0.1:9/index.json: cannot be fetched" in d.reason


def test_no_release_index_means_nothing_to_check() -> None:
    d = asyncio.run(_updater(Recorder()).check_once(policy(index=""), MON_1200))
    assert d.action is UpdateAction.none and "no release_index" in d.reason


# -- end to end: pip installs from a local package index into a throwaway venv ----------------------------------

DIST = "tollhouse-fake-agent"
MODULE = "tollhouse_fake_agent"


def _wheel(directory: Path, version: str) -> Path:
    """A minimal pure-Python wheel of DIST at `version` (built by hand: no build backend, no network)."""
    info = f"{MODULE}-{version}.dist-info"
    files = {
        f"{MODULE}/__init__.py": f'__version__ = "{version}"\n'.encode(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {DIST}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tollhouse-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{name},sha256={_b64sha(data)},{len(data)}" for name, data in files.items()]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    path = directory / f"{MODULE}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for name, data in files.items():
            whl.writestr(name, data)
    return path


def _b64sha(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class PackageIndex:
    root: Path  # served at `url`: index.json, simple/<dist>/ (PEP 503), wheels/
    url: str
    python: str  # a throwaway venv's interpreter

    def installed(self) -> str | None:
        out = subprocess.run([self.python, "-c", f"import importlib.metadata as m; print(m.version('{DIST}'))"],
                             capture_output=True, text=True, check=False)
        return out.stdout.strip() if out.returncode == 0 else None

    def reset_to(self, version: str) -> None:
        if self.installed() == version:
            return
        subprocess.run([self.python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
                        "--find-links", str(self.root / "wheels"), f"{DIST}=={version}"], check=True)
        assert self.installed() == version

    def write_index(self, doc: dict[str, Any]) -> str:
        (self.root / "index.json").write_text(json.dumps(doc))
        return f"{self.url}/index.json"


@pytest.fixture(scope="module")
def package_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PackageIndex]:
    root = tmp_path_factory.mktemp("pkgindex")
    wheels = root / "wheels"
    wheels.mkdir()
    project = root / "simple" / DIST
    project.mkdir(parents=True)
    links = [f'<a href="../../wheels/{w.name}#sha256={hashlib.sha256(w.read_bytes()).hexdigest()}">{w.name}</a>'
             for w in (_wheel(wheels, v) for v in ("0.1.0", "0.2.0"))]
    (project / "index.html").write_text("<!DOCTYPE html><html><body>\n" + "<br>\n".join(links) + "\n</body></html>\n")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield PackageIndex(root, f"http://127.0.0.1:{server.server_address[1]}", str(venv / "bin" / "python"))
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    with ConnectProxy(auth=("svc", "s3cret")) as p:
        yield p


@pytest.mark.timeout(180)
def test_e2e_auto_update_installs_from_a_simple_index_and_restarts(package_index: PackageIndex) -> None:
    package_index.reset_to("0.1.0")
    url = package_index.write_index({"index_url": "simple/", "releases": [  # relative to the index itself
        {"version": "v0.1.0", "requirement": f"{DIST}==0.1.0"},
        {"version": "v0.2.0", "requirement": f"{DIST}==0.2.0", "published": "2026-01-10T00:00:00Z"},
        {"version": "v0.3.0-beta.1", "requirement": f"{DIST}==0.3.0b1"},  # stable channel: not considered
    ]})
    rec = Recorder()
    up = Updater(package_index.python, parse_version("v0.1.0"), None, rec.notice, rec.restart)
    d = asyncio.run(up.check_once(policy("auto", index=url), MON_1200))
    assert d.action is UpdateAction.install_now, d.reason
    assert package_index.installed() == "0.2.0"
    assert rec.restarts == 1
    assert [k for k, _ in rec.notices] == ["agent.update.installed"]
    assert up.status()["installed_pending_restart"] == "v0.2.0"


@pytest.mark.timeout(180)
def test_e2e_pinned_downgrade_through_the_upstream_proxy(package_index: PackageIndex, proxy: ConnectProxy) -> None:
    package_index.reset_to("0.2.0")
    url = package_index.write_index({"find_links": "wheels/", "no_index": True, "releases": [
        {"version": "v0.1.0", "requirement": f"{DIST}==0.1.0"},
        {"version": "v0.2.0", "requirement": f"{DIST}==0.2.0"},
    ]})
    rec = Recorder()
    up = Updater(package_index.python, parse_version("v0.2.0"), None, rec.notice, rec.restart)
    p = AgentPolicy.model_validate({"update_policy": "auto", "pinned_version": "v0.1.0", "release_index": url,
                                    "upstream_proxy": proxy.url_with_auth, "maintenance_window": "Mon 11:00-13:00"})
    d = asyncio.run(up.check_once(p, MON_1200))
    assert d.action is UpdateAction.install_now, d.reason
    assert package_index.installed() == "0.1.0" and rec.restarts == 1
    seen = proxy.requests
    assert proxy.refused == 0  # both the updater and pip sent the proxy credentials
    assert f"GET {url}" in seen  # the index, fetched by the updater
    assert f"GET {package_index.url}/wheels/" in seen  # pip's find-links page and the wheel itself
    assert any(s.startswith(f"GET {package_index.url}/wheels/{MODULE}-0.1.0") for s in seen), seen


@pytest.mark.timeout(180)
def test_e2e_failed_install_is_reported_and_does_not_restart(package_index: PackageIndex) -> None:
    package_index.reset_to("0.1.0")
    url = package_index.write_index({"index_url": f"{package_index.url}/simple/", "releases": [
        {"version": "v0.9.0", "requirement": f"{DIST}==0.9.0"}]})  # listed, but no such wheel
    rec = Recorder()
    up = Updater(package_index.python, parse_version("v0.1.0"), None, rec.notice, rec.restart)
    d = asyncio.run(up.check_once(policy("auto", index=url), MON_1200))
    assert d.action is UpdateAction.error and "installing v0.9.0 failed" in d.reason
    assert f"{DIST}==0.9.0` failed (exit 1)" in d.reason and "No matching distribution" in d.reason
    assert rec.restarts == 0 and [k for k, _ in rec.notices] == ["agent.update.failed"]
    assert package_index.installed() == "0.1.0" and up.status()["last_error"] == d.reason
