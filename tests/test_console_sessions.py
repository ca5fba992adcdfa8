"""Console sessions end when they are ended, not only when their cookie expires: a sign-out ends the session on
every gateway sharing the store (a copy of the cookie with it), an admin can end every session of a user, and
both hold across restarts and while the store cannot be written."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import raw_http
from conftest import ADMIN, Gateway
from console_http import Browser
from console_roles import role_cookie
from tollhouse.events.store import open_store
from tollhouse.events.writer import StoreRunner
from tollhouse.gateway.session_revocations import Revocations, Session

USAGE = "/api/v1/usage"
REVOKE = "/api/v1/console/sessions/revoke"
_CSRF = re.compile(rb'name="csrf" value="([0-9a-f]+)"')


def sign_in(gw: Gateway, name: str) -> str:
    """The admin-token sign-in of the console's login form; the session cookie it sets ("name=value")."""
    status, _, headers = raw_http.request(gw.port, "POST", "/console/login", urlencode(
        {"token": ADMIN, "name": name, "next": "/console/"}).encode(),
        {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 303, status
    return headers["set-cookie"].split(";", 1)[0]


def sign_out(gw: Gateway, cookie: str) -> int:
    _, page, _ = raw_http.request(gw.port, "GET", "/console/", None, {"Cookie": cookie})
    found = _CSRF.search(page)
    assert found is not None, page[:300]
    status, _, headers = raw_http.request(gw.port, "POST", "/console/logout",
                                          urlencode({"csrf": found.group(1).decode()}).encode(),
                                          {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"})
    assert "Max-Age=0" in headers.get("set-cookie", "")
    return status


def works(gw: Gateway, cookie: str) -> bool:
    """Whether the session opens a console page and then the API. (A session ends between the two at most: once
    refused, it is never accepted again.)"""
    page = raw_http.request(gw.port, "GET", "/console/", None, {"Cookie": cookie})[0]
    api = raw_http.request(gw.port, "GET", USAGE, None, {"Cookie": cookie})[0]
    assert (page, api) in ((200, 200), (303, 401), (200, 401)), (page, api)
    return api == 200


def eventually(what: str, check: Callable[[], bool], within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {within_s} s"
        time.sleep(0.05)


def audit(gw: Gateway, kind: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(gw.get("/api/v1/audit")[1])["entries"]
    return [e for e in entries if e["kind"] == kind]


def revoke(gw: Gateway, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, raw, _ = raw_http.request(gw.port, "POST", REVOKE, data, {
        "Content-Type": "application/json", **({"Authorization": f"Bearer {ADMIN}"} if headers is None else headers)})
    reply: dict[str, Any] = json.loads(raw)
    return status, reply


def test_a_copied_cookie_stops_working_everywhere_once_its_user_signs_out(store_url: str, tmp_path: Path) -> None:
    config = {"store": {"url": store_url}}
    one = Gateway(config, tmp_path / "one").start()
    two = Gateway(config, tmp_path / "two").start()
    try:
        cookie = sign_in(one, "ada")
        copy = cookie  # what a shared machine, a synced profile or a leaked header keeps
        other = sign_in(two, "ada")  # the same user's session on another browser
        assert works(one, copy) and works(two, copy) and works(one, other)
        assert sign_out(one, cookie) == 303
        assert not works(one, copy)  # here: at once
        eventually("the other gateway refuses the signed-out session", lambda: not works(two, copy))
        assert works(one, other) and works(two, other)  # signing out ends that session only
        [entry] = audit(one, "console.sign_out")
        assert entry["actor"] == "ada" and entry["data"] == {"role": "admin"}
        one.stop()
        one = Gateway(config, tmp_path / "one").start()  # and after a restart
        assert not works(one, copy) and works(one, other)
    finally:
        one.stop()
        two.stop()


def test_an_admin_ends_every_session_of_a_user(store_url: str, tmp_path: Path) -> None:
    config = {"store": {"url": store_url}}
    one = Gateway(config, tmp_path / "one").start()
    two = Gateway(config, tmp_path / "two").start()
    try:
        ada = [sign_in(one, "ada@example.com"), sign_in(two, "ada@example.com"),
               role_cookie(ADMIN, "ada@example.com", "finance", session_id="sso-session")]
        bob = sign_in(one, "bob@example.com")
        assert all(works(one, c) and works(two, c) for c in [*ada, bob])
        # who may: the admin only; a session needs the CSRF header as for every write
        finance = role_cookie(ADMIN, "fred", "finance")
        assert revoke(one, {"user": "ada@example.com"}, {"Cookie": finance})[0] == 403
        for bad, says in (({}, '"user"'), ({"user": "  "}, '"user"'), ({"user": "ada", "who": 1}, "'who'"),
                          ([1], '"user"'), ({"user": "x" * 321}, "at most 320"), (b"{nope", "not valid JSON")):
            status, reply = revoke(one, bad)
            assert status == 400 and says in reply["error"]["message"], (bad, reply)
        assert all(works(one, c) for c in ada)  # nothing changed
        status, reply = revoke(two, {"user": " Ada@Example.com "}, {"Authorization": f"Bearer {ADMIN}",
                                                                     "X-Tollhouse-Actor": "carol"})
        assert status == 200 and reply["user"] == "Ada@Example.com"  # names match whatever their case
        assert abs(datetime.fromisoformat(reply["revoked_before"]).timestamp() - time.time()) < 60
        assert not any(works(two, c) for c in ada)
        eventually("the other gateway ends ada's sessions", lambda: not any(works(one, c) for c in ada))
        assert works(one, bob) and works(two, bob)
        again = sign_in(one, "ada@example.com")  # signing in again starts a session that works
        assert works(one, again) and works(two, again)
        [entry] = audit(one, "console.sessions_revoked")
        assert entry["actor"] == "carol" and entry["data"] == {"user": "Ada@Example.com",
                                                               "before": reply["revoked_before"]}
    finally:
        one.stop()
        two.stop()


def test_a_sign_out_holds_at_once_while_the_store_is_locked_and_is_stored_when_it_frees(tmp_path: Path) -> None:
    """Another process holds SQLite's write lock past the store's 5 s wait: the sign-out still answers and
    holds on this gateway; it is written once the lock is released, and the other gateway then refuses it."""
    db = tmp_path / "shared.db"
    config = {"store": {"url": f"sqlite:///{db}"}}
    one = Gateway(config, tmp_path / "one").start()
    two = Gateway(config, tmp_path / "two").start()
    try:
        cookie = sign_in(one, "ada")
        assert works(two, cookie)
        locker = sqlite3.connect(db, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        try:
            assert sign_out(one, cookie) == 303
            assert not works(one, cookie)
            assert works(two, cookie)  # not stored yet: the other gateway cannot know
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        eventually("the sign-out is stored and the other gateway refuses it", lambda: not works(two, cookie),
                   within_s=10)
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT kind FROM console_revocations").fetchall() == [("session",)]
    finally:
        one.stop()
        two.stop()


def test_a_cookie_of_the_earlier_format_is_refused(tmp_path: Path) -> None:
    """Cookies issued before sessions had ids (expiry.role.name, validly signed) cannot be signed out, so they
    are not accepted: their users sign in again."""
    gw = Gateway({}, tmp_path / "gw").start()
    try:
        payload = f"{int(time.time()) + 3600}.admin.{base64.urlsafe_b64encode(b'ada').decode().rstrip('=')}"
        signature = hmac.new(ADMIN.encode(), b"tollhouse-console-session\0" + payload.encode(),
                             hashlib.sha256).hexdigest()
        assert not works(gw, f"tollhouse_console={payload}.{signature}")
        assert works(gw, sign_in(gw, "ada"))
    finally:
        gw.stop()


def session_id(cookie: str) -> str:
    return cookie.split("=", 1)[1].split(".")[4]


def listed(gw: Gateway) -> list[tuple[str, str, str]]:
    status, body, _ = gw.get("/api/v1/console/sessions")
    assert status == 200, body
    return [(s["id"], s["user"], s["via"]) for s in json.loads(body)["sessions"]]


def test_admins_see_who_is_signed_in_and_end_one_session_or_all_of_a_persons(store_url: str,
                                                                              tmp_path: Path) -> None:
    config = {"store": {"url": store_url}}
    one = Gateway(config, tmp_path / "one").start()
    two = Gateway(config, tmp_path / "two").start()
    try:
        first, second = sign_in(one, "ada"), sign_in(one, "ada")
        bob = sign_in(two, "bob")  # on the other gateway: listed from the shared store
        assert listed(one) == [(session_id(c), n, "admin_token") for c, n in ((bob, "bob"), (second, "ada"),
                                                                               (first, "ada"))]
        admin = Browser(one, "admin", "carol")
        page = admin.get("/console/sessions")[1]
        assert page.count(b"End this session") == 3 and b"the admin token" in page
        auditor = Browser(one, "auditor", "aud")
        status, seen, _ = auditor.get("/console/sessions")
        assert status == 200 and b"bob" in seen and b"End this session" not in seen  # reads, changes nothing
        assert auditor.post(f"/console/sessions/{session_id(bob)}/end", {})[0] == 403
        assert admin.post(f"/console/sessions/{session_id(bob)}/end", {}, csrf=False)[0] == 400  # no CSRF token
        assert works(two, bob)
        status, _, headers = admin.post(f"/console/sessions/{session_id(first)}/end", {})
        assert status == 303 and headers["location"] == "/console/sessions?ended=ada"
        assert not works(one, first) and works(one, second)  # that session only
        status, _, _ = admin.post("/console/sessions/end-user", {"user": "bob"})
        assert status == 303 and not works(one, bob)
        eventually("the other gateway ends bob's session", lambda: not works(two, bob))
        assert listed(two) == [(session_id(second), "ada", "admin_token")]
        assert revoke(one, {}, {"Authorization": f"Bearer {ADMIN}"})[0] == 400
        status, raw, _ = raw_http.request(one.port, "POST", "/api/v1/console/sessions/nope/revoke", b"",
                                          {"Authorization": f"Bearer {ADMIN}"})
        assert status == 404 and b"GET /api/v1/console/sessions" in raw
        status, raw, _ = raw_http.request(two.port, "POST", f"/api/v1/console/sessions/{session_id(second)}/revoke",
                                          b"", {"Authorization": f"Bearer {ADMIN}"})
        assert status == 200 and json.loads(raw)["session"]["user"] == "ada"
        assert not works(two, second) and listed(two) == []
        eventually("the other gateway no longer lists it", lambda: listed(one) == [])
        ended = audit(one, "console.session_revoked")
        assert [(e["actor"], e["data"]["user"]) for e in ended] == [("carol", "ada"), ("admin", "ada")]
        assert [e["data"]["user"] for e in audit(one, "console.sessions_revoked")] == ["bob"]
    finally:
        one.stop()
        two.stop()


def test_a_sign_out_the_store_refused_survives_a_restart_before_the_store_is_back(tmp_path: Path) -> None:
    """The revocation is kept in the data dir while the store refuses it: a gateway started again (or killed
    and started) before the store is back still refuses the session, and stores it once the store takes it."""
    async def main() -> None:
        store_path, spill = tmp_path / "store.db", tmp_path / "console-revocations.jsonl"
        session = Session("the-session-id", int(time.time() * 1000), int(time.time()) + 3600)
        runner = StoreRunner(open_store(f"sqlite:///{store_path}", tmp_path))
        first = Revocations(runner, time.time, spill)
        locker = sqlite3.connect(store_path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        try:
            await first.sign_out(session)  # the store waits 5 s for the lock, then refuses
            assert first.published.current.refuses("ada", session) and spill.exists()
            again = Revocations(runner, time.time, spill)  # as a restarted gateway builds it
            assert again.published.current.refuses("ada", session)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        await again.refresh()  # the store is back: written, and the file is gone
        assert not spill.exists()
        fresh = Revocations(runner, time.time)  # knows only the store
        await fresh.refresh()
        assert fresh.published.current.refuses("ada", session)
        await asyncio.get_running_loop().run_in_executor(None, runner.close)

    asyncio.run(main())
