"""What a security review found exposed, each closed and checked on a real gateway over real sockets: the console
without sign-in, the admin token in the start-up log, the provider key reflected by an upstream, oversized
identity headers, an unknown key owner, one requester filling the exemption queue, and a rules file silently
overwriting policy published through the API."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import yaml
from aiohttp import web

import raw_http
from conftest import ADMIN, Gateway, Mock, upstreams
from test_gateway_sdks import oai
from tollhouse.gateway.redact import Redactor, StreamRedactor
from tollhouse.mock.serve_thread import ThreadedServer
from tollhouse.subject_ids import valid_subject_id

REAL_KEY = "sk-proj-REALprovider-key_0123456789abcdefXYZ"
Reply = raw_http.Reply
NO_O1 = {"id": "no-o1", "scope": "org", "severity": "BLOCK", "condition": {"type": "MODEL_DENYLIST", "models": ["o1"]}}
NO_O3 = {"id": "no-o3", "scope": "org", "severity": "BLOCK", "condition": {"type": "MODEL_DENYLIST", "models": ["o3"]}}
NO_GPT5 = {"id": "no-gpt5", "scope": "org", "severity": "BLOCK",
           "condition": {"type": "MODEL_DENYLIST", "models": ["gpt-5"]}}
DIRECTORY = {"org": "acme", "teams": [{"id": "platform"}],
             "projects": [{"id": "checkout", "team": "platform"}],
             "people": [{"id": "alice", "team": "platform", "projects": ["checkout"]},
                        {"id": "bob", "team": "platform"},
                        *({"id": f"p{i}", "team": "platform"} for i in range(30))],
             "services": [{"id": "support-bot", "team": "platform"}]}


def _http(gw: Gateway, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
          source: str | None = None) -> Reply:
    return raw_http.request(gw.port, method, path, body, headers, source)


def _form(gw: Gateway, path: str, fields: dict[str, str], headers: dict[str, str] | None = None) -> Reply:
    return _http(gw, "POST", path, urlencode(fields).encode(),
                 {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})})


def _json(gw: Gateway, method: str, path: str, data: Any = None, token: str | None = ADMIN) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    status, raw, _ = _http(gw, method, path, None if data is None else json.dumps(data).encode(), headers)
    return status, json.loads(raw) if raw else None


def _config(mock_url: str, **extra: Any) -> dict[str, Any]:
    return {"identity": {"trust_user_header": True}, "enforcement": "on", "directory": DIRECTORY,
            "providers": upstreams(mock_url, api_key=REAL_KEY), **extra}


# 1. The console: every page needs a signed-in user; the requester's pages show that request alone


def test_console_pages_need_a_signed_in_user(mock: Mock, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory(_config(mock.url, policy={"rules": [NO_O1, NO_O3]}))
    oai(gw, "alice").with_options(default_headers={"X-Tollhouse-User": "alice", "X-Tollhouse-Project": "checkout"}
                                  ).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user",
                                                                                           "content": "hi"}])
    for path in ("/console/", "/console/usage", "/console/teams/platform", "/console/exemptions",
                 "/console/policy?x=1", "/console/no-such-page"):
        status, body, headers = _http(gw, "GET", path)
        assert status == 303, path
        assert headers["location"] == "/console/login?next=" + quote(path, safe="/"), path
        assert b"alice" not in body and b"gpt-4o-mini" not in body and b"checkout" not in body
    status, body, _ = _http(gw, "GET", "/console/", headers={"Authorization": "Bearer wrong"})
    assert status == 303 and b"alice" not in body

    # Signing in with the admin token goes back to the page asked for, as role admin.
    status, page, _ = _http(gw, "GET", "/console/login?next=/console/")
    assert status == 200 and b'name="next" value="/console/"' in page
    status, _, headers = _form(gw, "/console/login", {"token": ADMIN, "name": "carol", "next": "/console/"})
    assert status == 303 and headers["location"] == "/console/"
    assert all(a in headers["set-cookie"] for a in ("HttpOnly", "SameSite=Strict", "Path=/console/"))
    cookie = {"Cookie": headers["set-cookie"].split(";")[0]}
    status, page, _ = _http(gw, "GET", "/console/", headers=cookie)
    assert status == 200 and b"alice" in page and b"checkout" in page
    status, page, _ = _http(gw, "GET", "/console/exemptions", headers=cookie)
    assert status == 200 and b"Signed in as <b>carol</b> (admin)" in page
    for elsewhere in ("//evil.example/x", "https://evil.example/", "/api/v1/events", "/console/login"):
        status, _, headers = _form(gw, "/console/login", {"token": ADMIN, "next": elsewhere})
        assert status == 303 and headers["location"] == "/console/exemptions", elsewhere
    status, _, headers = _form(gw, "/console/login", {"token": "wrong", "next": "/console/"})
    assert status == 401 and "set-cookie" not in headers

    # The requester's side stays open, and shows nothing but the request itself.
    status, page, _ = _http(gw, "GET", "/console/exemptions/new?subject=alice&rule=no-o1&model=o1")
    assert status == 200 and b"no-o3" not in page  # no list of the policy's other rules
    status, body = _json(gw, "POST", "/api/v1/exemptions", {"subject": "alice", "rule": "no-o1",
                                                           "justification": "alice needs o1 for evals"}, token=None)
    assert status == 201, body
    alices = body["id"]
    status, body = _json(gw, "POST", "/api/v1/exemptions", {"subject": "bob", "rule": "no-o3",
                                                           "justification": "bob's secret project"}, token=None)
    assert status == 201, body
    status, page, _ = _http(gw, "GET", f"/console/exemptions/{alices}")
    assert status == 200 and b"alice needs o1 for evals" in page
    assert body["id"].encode() not in page and b"bob" not in page and b"gpt-4o-mini" not in page
    assert b"/approve" not in page and b"Pending" not in page
    assert _form(gw, f"/console/exemptions/{alices}/approve", {"hours": "2"})[0] == 303  # to the sign-in
    assert _json(gw, "GET", f"/api/v1/exemptions/{alices}", token=None)[1]["exemption"]["status"] == "pending"


# 2. The admin token is never printed; the banner says where it is stored


def test_the_admin_token_is_never_printed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k != "TOLLHOUSE_ADMIN_TOKEN"}
    proc = subprocess.Popen([sys.executable, "-m", "tollhouse", "serve", "--port", "0", "--data-dir", str(data)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    killer = threading.Timer(60, proc.kill)  # a hung start fails the test instead of hanging it
    killer.start()
    try:
        banner = []
        assert proc.stdout is not None
        for line in proc.stdout:
            banner.append(line)
            if "Console:" in line:
                break
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    finally:
        killer.cancel()
    printed = "".join(banner) + out + err
    token_file = data / "admin_token"
    token = token_file.read_text().strip()
    assert token.startswith("tha-") and len(token) > 20
    assert token not in printed, printed
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert f"Admin token: {token_file} (mode 0600; read it with: cat {token_file})" in printed
    assert f"Bearer $(cat {token_file})" in printed


# 3. An upstream that reflects the Authorization header never hands the real key to a gateway-key caller


def _reflector() -> web.Application:
    """An upstream whose errors echo the credentials they received: as sent, URL-encoded, in base64 (at each
    alignment) and in a header; streamed, in 5-byte chunks so the key is split across them."""

    async def chat(request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        body = await request.json()
        echo = {"error": {"message": f"Incorrect API key provided: {auth}", "type": "invalid_request_error",
                          "url": "https://up.example/?auth=" + quote(auth, safe=""),
                          "dump": [base64.b64encode(p.encode() + auth.encode()).decode() for p in ("", "a", "ab")],
                          "basic": base64.urlsafe_b64encode(f"user:{auth[7:]}".encode()).decode()}}
        if not body.get("stream"):
            return web.json_response(echo, status=401, headers={"X-Echo-Authorization": auth})
        resp = web.StreamResponse(status=401, headers={"Content-Type": "text/event-stream",
                                                       "X-Echo-Authorization": auth})
        await resp.prepare(request)
        data = b"data: " + json.dumps(echo).encode() + b"\n\n"
        for i in range(0, len(data), 5):
            await resp.write(data[i:i + 5])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


@pytest.fixture
def reflector() -> Iterator[str]:
    server = ThreadedServer(_reflector)
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


def _leaks(data: bytes | str) -> list[str]:
    text = data if isinstance(data, str) else data.decode("utf-8", "replace")
    found = [form for form in (REAL_KEY, quote(REAL_KEY, safe=""), REAL_KEY[10:30]) if form in text]
    for pad in ("", "a", "ab", "user:"):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            whole = enc(pad.encode() + REAL_KEY.encode()).decode()
            if whole[len(pad) * 2:][:20] in text:
                found.append(f"base64 after {pad!r}")
    return found


def test_the_injected_provider_key_is_redacted_from_upstream_answers(reflector: str, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory({"directory": DIRECTORY, "providers": upstreams(reflector, api_key=REAL_KEY)})
    status, body = _json(gw, "POST", "/api/v1/keys", {"user": "alice"})
    assert status == 201, body
    gateway_key = body["key"]
    call = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {gateway_key}", "Content-Type": "application/json"}

    status, data, got = _http(gw, "POST", "/openai/v1/chat/completions", json.dumps(call).encode(), headers)
    assert status == 401
    assert _leaks(data) == [] and _leaks(json.dumps(got)) == []
    error = json.loads(data)["error"]
    assert error["message"] == "Incorrect API key provided: Bearer [redacted]"
    assert got["x-echo-authorization"] == "Bearer [redacted]" and "[redacted]" in error["url"]
    assert all("[redacted]" in d for d in error["dump"]) and "[redacted]" in error["basic"]

    status, data, got = _http(gw, "POST", "/openai/v1/chat/completions",
                              json.dumps({**call, "stream": True}).encode(), headers)
    assert status == 401 and got["x-echo-authorization"] == "Bearer [redacted]"
    assert _leaks(data) == [] and b"Incorrect API key provided: Bearer [redacted]" in data
    assert data.endswith(b"\n\n")  # what the window held back at the end was sent

    # A caller's own key is theirs: nothing is injected, nothing is changed.
    own = {"Authorization": "Bearer sk-callers-own-key-12345678", "Content-Type": "application/json",
           "X-Tollhouse-User": "alice"}
    status, data, got = _http(gw, "POST", "/openai/v1/chat/completions", json.dumps(call).encode(), own)
    assert status == 401 and b"Bearer sk-callers-own-key-12345678" in data and "[redacted]" not in data.decode()


def test_a_key_split_across_stream_chunks_at_any_point_is_redacted() -> None:
    redactor = Redactor([REAL_KEY])
    message = (b"data: {\"error\": \"bad key " + REAL_KEY.encode() + b" / "
               + base64.b64encode(b"x" + REAL_KEY.encode()) + b"\"}\n\n")
    for size in (1, 2, 3, 5, 7, 13, 40, len(message)):
        stream = StreamRedactor(redactor)
        out = [stream.feed(message[i:i + size]) for i in range(0, len(message), size)]
        whole = b"".join(out) + stream.finish()
        assert _leaks(whole) == [] and whole.count(b"[redacted]") == 2, size
        assert whole.startswith(b"data: {\"error\": \"bad key [redacted] / ") and whole.endswith(b"\"}\n\n")
    plain = StreamRedactor(redactor)  # ordinary chunks go out whole, at once
    assert plain.feed(b"data: {\"ok\": true}\n\n") == b"data: {\"ok\": true}\n\n" and plain.finish() == b""


# 4. Identity headers are ids; a gateway key is made only for someone the directory has


@pytest.mark.parametrize(("value", "ok"), [
    ("alice", True), ("alice@acme.example", True), ("svc:support-bot", True), ("a.b_c-d+e", True),
    ("x" * 128, True), ("x" * 129, False), ("", False), ("alice smith", False), ("alice\tx", False),
    ("ålice", False), ("<script>", False), ("a/b", False),
])
def test_valid_subject_id(value: str, ok: bool) -> None:
    assert (valid_subject_id(value) is None) is ok


def test_identity_headers_must_be_ids(gateway: Gateway, mock: Mock) -> None:
    call = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}).encode()
    base = {"Authorization": "Bearer sk-x", "Content-Type": "application/json"}
    status, body, _ = _http(gateway, "POST", "/openai/v1/chat/completions", call,
                            {**base, "X-Tollhouse-User": "m" * 60_000})
    assert status == 400
    error = json.loads(body)["error"]
    assert "X-Tollhouse-User" in error["message"] and "128" in error["message"] and len(body) < 2000
    assert error["code"] == "invalid_identity_header"
    status, body, _ = _http(gateway, "POST", "/openai/v1/chat/completions", call,
                            {**base, "X-Tollhouse-User": "alice", "X-Tollhouse-Project": "p" * 200})
    assert status == 400 and "X-Tollhouse-Project" in json.loads(body)["error"]["message"]
    status, body, _ = _http(gateway, "POST", "/anthropic/v1/messages", b'{"model": "claude-3-haiku-20240307"}',
                            {"x-api-key": "sk-ant-x", "X-Tollhouse-User": "bob smith",
                             "Content-Type": "application/json"})
    assert status == 400 and b'"type":"error"' in body, body  # in the caller's provider shape
    assert mock.stats.total == 0
    assert _http(gateway, "POST", "/openai/v1/chat/completions", call, {**base, "X-Tollhouse-User": "alice"})[0] == 200
    events = gateway.events()  # newest first: each refused call leaves an event, under no name it made up
    assert [(e["subject"], e["status"], e["decision"]) for e in events] == [
        ("alice", 200, "allow"), *[("anonymous", 400, "block")] * 3]
    assert all("X-Tollhouse-" in e["error"] and "m" * 200 not in e["error"] and "p" * 200 not in e["error"]
               for e in events[1:])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tollhouse", *args], capture_output=True, text=True, timeout=60)


def test_keys_create_refuses_a_person_the_directory_lacks(mock: Mock, tmp_path: Path) -> None:
    config = tmp_path / "tollhouse.yaml"
    config.write_text(yaml.safe_dump({"directory": DIRECTORY}))
    data = str(tmp_path / "data")
    refused = _cli("keys", "create", "--user", "mallory", "--config", str(config), "--data-dir", data)
    assert refused.returncode == 2 and refused.stdout == ""
    assert f"the directory: section of {config}" in refused.stderr and "directory.people" in refused.stderr
    assert "--allow-unknown" in refused.stderr and "Traceback" not in refused.stderr
    assert _cli("keys", "create", "--user", "alice", "--config", str(config), "--data-dir", data).returncode == 0
    forced = _cli("keys", "create", "--user", "mallory", "--allow-unknown", "--config", str(config), "--data-dir", data)
    assert forced.returncode == 0 and forced.stdout.startswith("th-")
    assert _cli("keys", "create", "--user", "m" * 200, "--allow-unknown", "--data-dir", data).returncode == 2

    # The latest stored directory version wins over the config's: dave was added through the API.
    gw = Gateway({"directory": DIRECTORY, "providers": upstreams(mock.url)}, tmp_path / "data").start()
    try:
        people = [*DIRECTORY["people"], {"id": "dave", "team": "platform"}]
        status, body = _json(gw, "PUT", "/api/v1/directory", {**DIRECTORY, "people": people})
        assert status == 200, body
        status, body = _json(gw, "POST", "/api/v1/keys", {"user": "mallory"})  # the admin API: the same rule
        assert status == 400 and "PUT /api/v1/directory" in body["error"]["message"]
        assert "allow_unknown" in body["error"]["message"]
        assert _json(gw, "POST", "/api/v1/keys", {"user": "mallory", "allow_unknown": True})[0] == 201
        assert _json(gw, "POST", "/api/v1/keys", {"user": "x y", "allow_unknown": True})[0] == 400
    finally:
        gw.stop()
    assert _cli("keys", "create", "--user", "dave", "--config", str(config), "--data-dir", data).returncode == 0
    refused = _cli("keys", "create", "--user", "mallory", "--config", str(config), "--data-dir", data)
    assert refused.returncode == 2 and "in the store" in refused.stderr and "PUT /api/v1/directory" in refused.stderr


# 5. One requester cannot fill the exemption queue for everyone


def test_one_source_cannot_exhaust_the_exemption_queue(mock: Mock, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory(_config(mock.url, policy={"rules": [NO_O1, NO_O3, NO_GPT5]},
                                          exemptions={"max_pending_per_subject": 2}))
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10, source_address=("127.0.0.2", 0))
    statuses: dict[int, int] = {}
    try:
        for i in range(1000):  # one source, made-up subjects, over one keep-alive connection
            body = json.dumps({"subject": f"nobody-{i}", "rule": "no-o1", "justification": "x"})
            conn.request("POST", "/api/v1/exemptions", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            error = json.loads(resp.read())["error"]
            assert error["field"] == "subject" and "not a person or service of the directory" in error["message"]
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
        for i in range(30):  # the same source, real people: up to the per-address limit
            body = json.dumps({"subject": f"p{i}", "rule": "no-o1", "justification": "x"})
            conn.request("POST", "/api/v1/exemptions", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            reply = json.loads(resp.read())
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
            if resp.status == 429:
                assert reply["error"]["limit"] == "exemptions.max_pending_per_address"
                assert "127.0.0.2" in reply["error"]["message"] and "retry once" in reply["error"]["message"]
    finally:
        conn.close()
    assert statuses == {400: 1000, 201: 20, 429: 10}

    # Alice's genuine request, from her own address, is accepted.
    status, body = _json(gw, "POST", "/api/v1/exemptions", {"subject": "alice", "rule": "no-o1",
                                                           "justification": "o1 for the eval suite"}, token=None)
    assert status == 201, body
    # Per subject: one per rule, at most max_pending_per_subject in all.
    assert _json(gw, "POST", "/api/v1/exemptions", {"subject": "alice", "rule": "no-o1",
                                                   "justification": "again"}, token=None)[0] == 409
    assert _json(gw, "POST", "/api/v1/exemptions", {"subject": "alice", "rule": "no-o3",
                                                   "justification": "o3 too"}, token=None)[0] == 201
    status, body = _json(gw, "POST", "/api/v1/exemptions", {"subject": "alice", "rule": "no-gpt5",
                                                           "justification": "and gpt-5"}, token=None)
    assert status == 429 and body["error"]["limit"] == "exemptions.max_pending_per_subject"
    # The console form says the same.
    status, page, _ = _form(gw, "/console/exemptions", {"subject": "nobody", "rule": "no-o1", "justification": "x"})
    assert status == 400 and b"not a person or service of the directory" in page
    pending = _json(gw, "GET", "/api/v1/exemptions?status=pending&limit=1000")[1]["exemptions"]
    assert len(pending) == 22 and "client_address" not in pending[0]


def test_the_whole_queue_has_a_bound_that_names_itself(mock: Mock, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory(_config(mock.url, policy={"rules": [NO_O1]}, exemptions={"max_pending": 3}))
    for i, source in enumerate(("127.0.0.2", "127.0.0.3", "127.0.0.4")):
        body = json.dumps({"subject": f"p{i}", "rule": "no-o1", "justification": "x"}).encode()
        assert _http(gw, "POST", "/api/v1/exemptions", body, {"Content-Type": "application/json"}, source)[0] == 201
    status, body = _json(gw, "POST", "/api/v1/exemptions", {"subject": "alice", "rule": "no-o1",
                                                           "justification": "x"}, token=None)
    assert status == 429 and body["error"]["limit"] == "exemptions.max_pending"
    assert "exemptions.max_pending = 3" in body["error"]["message"]


# 6. A rules file in force is the one source of the policy


def _reload(gw: Gateway) -> bool:
    """Have the gateway's policy holder read its rules file now (what its watcher does on a change)."""
    assert gw.state is not None and gw._loop is not None
    changed: bool = asyncio.run_coroutine_threadsafe(gw.state.policies.reload(), gw._loop).result(10)
    return changed


def test_a_rules_file_is_authoritative_and_comment_edits_change_nothing(mock: Mock, gateway_factory: Any,
                                                                        tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump([NO_O1]))
    gw: Gateway = gateway_factory(_config(mock.url, policy={"rules_file": str(rules)}))
    status, policy = _json(gw, "GET", "/api/v1/policy")
    assert status == 200 and policy["authoritative"] == f"file:{rules}" and policy["source"] == f"file:{rules}"
    version = policy["version"]

    status, body = _json(gw, "PUT", "/api/v1/policy", {"rules": [NO_O1, NO_O3]})
    assert status == 409 and body["error"]["code"] == "policy_file_authoritative"
    assert str(rules) in body["error"]["message"] and "edit" in body["error"]["message"]
    status, body = _json(gw, "POST", "/api/v1/policy/rollback", {"version": version})
    assert status == 409 and str(rules) in body["error"]["message"]
    status, filed = _json(gw, "POST", "/api/v1/exemptions", {"subject": "alice", "rule": "no-o1",
                                                            "justification": "o1 evals"}, token=None)
    assert status == 201
    status, body = _json(gw, "POST", f"/api/v1/exemptions/{filed['id']}/approve",
                         {"kind": "rule_edit", "rule": {**NO_O1, "models": ["o1-preview"]}})
    assert status == 409 and str(rules) in body["error"]["message"]
    assert _json(gw, "GET", f"/api/v1/exemptions/{filed['id']}", token=None)[1]["exemption"]["status"] == "pending"

    # Comments, whitespace and key order: no version, nothing changes.
    reordered = {k: NO_O1[k] for k in reversed(list(NO_O1))}
    rules.write_text("# reviewed by security, 2026-03\n\n" + yaml.safe_dump([reordered], indent=4) + "\n# end\n")
    assert _reload(gw) is False
    assert _json(gw, "GET", "/api/v1/policy")[1]["version"] == version
    assert len(_json(gw, "GET", "/api/v1/policy/versions")[1]["versions"]) == 1

    # A real edit of the file is a new version, from the file.
    rules.write_text(yaml.safe_dump([NO_O1, NO_O3]))
    assert _reload(gw) is True
    status, policy = _json(gw, "GET", "/api/v1/policy")
    assert policy["version"] == version + 1 and [r["id"] for r in policy["rules"]] == ["no-o1", "no-o3"]
    assert policy["source"] == f"file:{rules}"


def test_without_a_rules_file_the_api_is_authoritative_and_survives_restarts(mock: Mock, tmp_path: Path) -> None:
    config = _config(mock.url)
    gw = Gateway(config, tmp_path / "data").start()
    try:
        status, policy = _json(gw, "PUT", "/api/v1/policy", {"rules": [NO_O1]})
        assert status == 200 and policy["authoritative"] == "api"
    finally:
        gw.stop()
    again = Gateway(config, tmp_path / "data").start()
    try:
        assert [r["id"] for r in _json(again, "GET", "/api/v1/policy")[1]["rules"]] == ["no-o1"]
    finally:
        again.stop()


def test_behind_a_trusted_proxy_the_forwarded_address_counts(mock: Mock, gateway_factory: Any) -> None:
    exemptions = {"max_pending_per_address": 1}
    trusting: Gateway = gateway_factory(_config(mock.url, policy={"rules": [NO_O1]}, exemptions=exemptions,
                                                identity={"trust_user_header": True,
                                                          "trusted_proxies": ["127.0.0.1/32"]}))
    plain: Gateway = gateway_factory(_config(mock.url, policy={"rules": [NO_O1]}, exemptions=exemptions))

    def file(gw: Gateway, subject: str, forwarded: str) -> tuple[int, Any]:
        body = json.dumps({"subject": subject, "rule": "no-o1", "justification": "x"}).encode()
        status, raw, _ = _http(gw, "POST", "/api/v1/exemptions", body,
                               {"Content-Type": "application/json", "X-Forwarded-For": forwarded})
        return status, json.loads(raw)

    assert file(trusting, "p0", "10.0.0.5")[0] == 201
    status, body = file(trusting, "p1", "10.0.0.5, 127.0.0.1")
    assert status == 429 and "(10.0.0.5)" in body["error"]["message"]
    assert file(trusting, "p2", "10.0.0.6")[0] == 201  # another client behind the same proxy
    # Not a trusted proxy: the header is the caller's word, and is ignored.
    assert file(plain, "p0", "10.0.0.5")[0] == 201
    status, body = file(plain, "p1", "10.0.0.6")
    assert status == 429 and "(127.0.0.1)" in body["error"]["message"]
