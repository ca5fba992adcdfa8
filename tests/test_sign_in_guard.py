"""Guessing the admin token: after `console.failed_sign_ins` wrong ones from an address within
`console.lockout_minutes`, that address may not try again (not even the right token) until the window has passed;
other addresses are not affected; every failure and lockout is audited."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from hypothesis import given, settings
from hypothesis import strategies as st

import raw_http
from conftest import ADMIN, Gateway
from console_roles import role_cookie
from tollhouse.gateway.sign_in_guard import MAX_ADDRESSES, SignInGuard

USAGE = "/api/v1/usage"
OTHER = "127.0.0.2"  # another machine, as far as the gateway can tell


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def bearer(gw: Gateway, token: str, path: str = USAGE, source: str | None = None) -> raw_http.Reply:
    return raw_http.request(gw.port, "GET", path, None, {"Authorization": f"Bearer {token}"}, source)


def sign_in_form(gw: Gateway, token: str) -> raw_http.Reply:
    return raw_http.request(gw.port, "POST", "/console/login", urlencode({"token": token, "name": "mallory"}).encode(),
                            {"Content-Type": "application/x-www-form-urlencoded"})


def audit(gw: Gateway, kind: str) -> list[dict[str, Any]]:
    status, body, _ = bearer(gw, ADMIN, "/api/v1/audit", OTHER)
    assert status == 200, body
    return [e for e in json.loads(body)["entries"] if e["kind"] == kind]


def test_wrong_admin_tokens_lock_their_address_out_for_the_window(tmp_path: Path) -> None:
    clock = Clock()
    gw = Gateway({"console": {"failed_sign_ins": 3, "lockout_minutes": 1}}, tmp_path / "gw", clock=clock).start()
    try:
        assert bearer(gw, "guess-1")[0] == 401
        assert sign_in_form(gw, "guess-2")[0] == 401  # the sign-in form counts
        assert bearer(gw, "guess-3", "/console/")[0] == 303  # and a bearer token on a page
        status, body, headers = bearer(gw, ADMIN)  # the right token, from the locked address
        error = json.loads(body)["error"]
        assert status == 429 and error["code"] == "too_many_failed_sign_ins" and "60 s" in error["message"]
        assert headers["retry-after"] == "60"
        status, page, headers = sign_in_form(gw, ADMIN)
        assert status == 429 and b"too many wrong admin tokens" in page and "set-cookie" not in headers
        assert bearer(gw, ADMIN, source=OTHER)[0] == 200  # another address is not affected
        failed = audit(gw, "console.sign_in_failed")
        assert [(e["actor"], e["data"]["failures"]) for e in failed] == [("127.0.0.1", 1), ("127.0.0.1", 2),
                                                                         ("127.0.0.1", 3)]
        assert [e["data"]["via"] for e in failed] == ["bearer token on /api/v1/usage", "console sign-in form",
                                                      "bearer token on /console/"]
        [locked] = audit(gw, "console.sign_in_locked")
        assert locked["actor"] == "127.0.0.1" and locked["data"] == {"failures": 3, "for_s": 60.0}
        clock.now += 30
        assert bearer(gw, ADMIN)[0] == 429  # still within the window
        clock.now += 31
        assert bearer(gw, ADMIN)[0] == 200  # the oldest failure is a minute old: it may try again
        assert "guess" not in json.dumps(audit(gw, "console.sign_in_failed"))  # what was tried is never kept
    finally:
        gw.stop()


def test_an_agents_wrong_enrollment_token_is_not_an_admin_token_guess(tmp_path: Path) -> None:
    gw = Gateway({"console": {"failed_sign_ins": 2}}, tmp_path / "gw").start()
    try:
        for _ in range(4):
            assert bearer(gw, "the-not-a-real-enrollment-token", "/api/v1/agent/bundle")[0] == 401
        assert bearer(gw, ADMIN)[0] == 200 and audit(gw, "console.sign_in_failed") == []
    finally:
        gw.stop()


def test_the_guard_remembers_a_bounded_number_of_addresses() -> None:
    entries: list[tuple[str, str]] = []
    guard = SignInGuard(1, 60, lambda: 1000.0, lambda kind, actor, data: entries.append((kind, actor)))
    for n in range(MAX_ADDRESSES + 1):
        guard.failed(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}", "test")
    assert guard.locked("10.0.0.0") is None  # the least recently failing address was forgotten
    assert guard.locked("10.0.0.1") == 60 and guard.locked(None) is None
    assert entries.count(("console.sign_in_locked", "10.0.0.1")) == 1


@settings(max_examples=200, deadline=None)
@given(attempts=st.integers(1, 4), window=st.integers(1, 50),
       steps=st.lists(st.tuples(st.integers(0, 30), st.sampled_from(["a", "b", None])), max_size=40))
def test_the_guard_agrees_with_counting_failures_in_the_window(attempts: int, window: int,
                                                               steps: list[tuple[int, str | None]]) -> None:
    """A model: an address is locked while at least `attempts` of its recorded failures are within the last
    `window` seconds; a locked address's tries are refused before they are compared, so they are not failures."""
    now = [0.0]
    guard = SignInGuard(attempts, window, lambda: now[0], lambda kind, actor, data: None)
    failures: dict[str, list[float]] = {}
    for dt, address in steps:
        now[0] += dt
        key = address or "unknown"
        in_window = [t for t in failures.get(key, []) if t > now[0] - window]
        locked = len(in_window) >= attempts
        assert (guard.locked(address) is not None) == locked
        if not locked:
            guard.failed(address, "test")
            failures.setdefault(key, []).append(now[0])


def test_tries_spread_over_gateways_sharing_a_store_count_together(store_url: str, tmp_path: Path) -> None:
    config = {"store": {"url": store_url}, "console": {"failed_sign_ins": 3}}
    one = Gateway(config, tmp_path / "one").start()
    two = Gateway(config, tmp_path / "two").start()
    try:
        assert bearer(one, "guess-1", source=OTHER)[0] == 401
        assert bearer(one, "guess-2", source=OTHER)[0] == 401
        assert bearer(two, "guess-3", source=OTHER)[0] == 401  # neither gateway saw three
        deadline = time.monotonic() + 10
        while any(bearer(gw, ADMIN, source=OTHER)[0] != 429 for gw in (one, two)):  # each reloads every second
            assert time.monotonic() < deadline, "the gateways never counted the tries together"
            time.sleep(0.1)
        assert bearer(one, ADMIN)[0] == 200 and bearer(two, ADMIN)[0] == 200  # other addresses are not affected
        status, body, _ = bearer(one, ADMIN, "/api/v1/audit")
        assert status == 200, body
        locked = [e for e in json.loads(body)["entries"] if e["kind"] == "console.sign_in_locked"]
        assert locked and all(e["actor"] == OTHER and e["data"]["across_gateways"] for e in locked), locked
    finally:
        one.stop()
        two.stop()


def test_the_overview_shows_admins_and_auditors_the_consoles_security(tmp_path: Path) -> None:
    gw = Gateway({}, tmp_path / "gw").start()
    try:
        for guess in ("guess-1", "guess-2"):
            assert bearer(gw, guess, source=OTHER)[0] == 401
        status, _, headers = sign_in_form(gw, ADMIN)  # a console session, from the form
        assert status == 303
        admin_cookie = headers["set-cookie"].split(";", 1)[0]
        page = raw_http.request(gw.port, "GET", "/console/", None, {"Cookie": admin_cookie})[1].decode()
        section = page[page.index('<section id="security">'):]
        text = " ".join(re.sub(r"<[^>]+>", " ", section).split())
        assert "1 console session signed in now" in text, text
        assert "In the last 24 hours: 2 wrong admin tokens , 0 lockouts" in text, text
        auditor = raw_http.request(gw.port, "GET", "/console/", None,
                                   {"Cookie": role_cookie(ADMIN, "aud", "auditor")})[1]
        assert b'id="security"' in auditor
        finance = raw_http.request(gw.port, "GET", "/console/", None,
                                   {"Cookie": role_cookie(ADMIN, "fiona", "finance")})[1]
        assert b"Console security" not in finance  # not for finance
    finally:
        gw.stop()
