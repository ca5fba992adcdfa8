"""The one router: matching (fixed paths, templates, 404/405 with Allow), the OpenAPI document generated from the
routes, and the roles on /api/v1 for console sessions (reads by role, writes only with the CSRF header, the
session's user as the actor)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from conftest import ADMIN, Gateway
from console_roles import role_cookie
from raw_http import request as raw_request
from tollhouse.gateway.router import Auth, Found, Missing, Route, Router


async def _nothing(request: Any, state: Any) -> Any:
    return None


def test_router_matching() -> None:
    router = Router([
        Route("GET", "/api/v1/keys", _nothing), Route("POST", "/api/v1/keys", _nothing),
        Route("DELETE", "/api/v1/keys/{prefix}", _nothing),
        Route("GET", "/console/exemptions/new", _nothing, Auth.public),
        Route("GET", "/console/exemptions/{id}", _nothing, Auth.public, segment=r"[a-z0-9]{1,8}"),
        Route("POST", "/console/exemptions/{id}/approve", _nothing, Auth.page),
    ])
    found = router.match("DELETE", "/api/v1/keys/th-abc")
    assert isinstance(found, Found) and found.params == {"prefix": "th-abc"}
    assert router.match("GET", "/api/v1/keys/th-abc") == Missing(("DELETE",))
    assert router.match("PUT", "/api/v1/keys") == Missing(("GET", "POST"))
    assert router.match("GET", "/api/v1/keys/a/b") == Missing(())
    new = router.match("GET", "/console/exemptions/new")
    assert isinstance(new, Found) and new.params == {}  # the fixed path, not {id} = "new"
    one = router.match("GET", "/console/exemptions/x1")
    assert isinstance(one, Found) and one.params == {"id": "x1"}
    assert router.match("GET", "/console/exemptions/NOT-AN-ID") == Missing(())  # the segment's pattern
    assert router.match("GET", "/console/exemptions/x1/approve") == Missing(("POST",))
    with pytest.raises(ValueError, match="declared twice"):
        Router([Route("GET", "/a", _nothing), Route("GET", "/a", _nothing)])


def test_unknown_paths_and_methods(gateway: Gateway) -> None:
    status, body, _ = gateway.get("/api/v1/nothing-here")
    assert status == 404 and json.loads(body)["error"] == {
        "message": "no such endpoint: /api/v1/nothing-here; see /api/v1/openapi.json", "code": "not_found"}
    status, body, headers = gateway.request("DELETE", "/api/v1/usage")
    assert status == 405 and headers["allow"] == "GET" and json.loads(body)["error"]["code"] == "method_not_allowed"
    status, _, headers = gateway.request("GET", "/api/v1/keys/th-abc")
    assert status == 405 and headers["allow"] == "DELETE"
    assert gateway.request("POST", "/healthz", token=None)[0] == 405
    status, body, _ = gateway.get("/nothing", token=None)  # not /{provider}/...: the hint, as before
    assert status == 404 and b"Tollhouse proxies /{provider}/" in body
    # a signed-in user gets the console's own 404 and 405 pages; an anonymous browser only the sign-in
    status, body, headers = gateway.get("/console/no-such-page")
    assert status == 404 and headers["content-type"].startswith("text/html") and b"no console page" in body
    status, _, headers = gateway.request("DELETE", "/console/")
    assert status == 405 and headers["allow"] == "GET"
    status, _, headers = raw_request(gateway.port, "GET", "/console/no-such-page")
    assert status == 303 and headers["location"] == "/console/login?next=/console/no-such-page"
    # the router's prefixes do not swallow a provider whose name starts the same
    assert gateway.request("POST", "/consoles/v1/x", token=None)[0] != 303


def test_the_openapi_document_is_generated_from_the_routes(gateway: Gateway) -> None:
    status, body, _ = gateway.get("/api/v1/openapi.json", token=None)
    paths = json.loads(body)["paths"]
    assert status == 200 and "/console/" not in paths and "/healthz" not in paths
    usage = paths["/api/v1/usage"]["get"]
    assert usage["summary"].startswith("Calls, tokens and cost over time")
    assert usage["security"] == [{"admin": []}, {"session": []}]
    assert usage["x-roles"] == ["admin", "auditor", "finance", "policy_owner"]
    assert "403" in usage["responses"] and usage["parameters"][0]["name"] == "group_by"
    assert paths["/api/v1/audit"]["get"]["x-roles"] == ["admin", "auditor"]
    assert paths["/api/v1/exemptions"]["post"]["security"] == []  # requesters need no sign-in
    assert paths["/api/v1/agent/bundle"]["get"]["security"] == [{"admin": []}, {"enrollment": []}]
    version = paths["/api/v1/policy/versions/{version}"]["get"]["parameters"]
    assert version == [{"name": "version", "in": "path", "required": True, "schema": {"type": "integer"}}]
    prefix = paths["/api/v1/keys/{prefix}"]["delete"]["parameters"]
    assert prefix[0]["name"] == "prefix" and prefix[0]["in"] == "path"


def _as(gateway: Gateway, role: str, method: str, path: str, body: Any = None,
        headers: dict[str, str] | None = None, name: str | None = None) -> tuple[int, dict[str, Any]]:
    cookie = role_cookie(ADMIN, name or f"a-{role}", role)
    data = json.dumps(body).encode() if body is not None else None
    status, raw, _ = raw_request(gateway.port, method, path, data,
                                 {"Cookie": cookie, "Content-Type": "application/json", **(headers or {})})
    return status, json.loads(raw) if raw.startswith(b"{") else {}


def _csrf(gateway: Gateway, role: str, name: str | None = None) -> str:
    cookie = role_cookie(ADMIN, name or f"a-{role}", role)
    _, page, _ = raw_request(gateway.port, "GET", "/console/", None, {"Cookie": cookie})
    found = re.search(rb'name="csrf" value="([0-9a-f]+)"', page)
    assert found is not None
    return found.group(1).decode()


READS = {  # path -> the roles that may GET it
    "/api/v1/usage": {"admin", "policy_owner", "finance", "auditor"},
    "/api/v1/events": {"admin", "policy_owner", "finance", "auditor"},
    "/api/v1/spend?scope=org": {"admin", "policy_owner", "finance", "auditor"},
    "/api/v1/directory": {"admin", "policy_owner", "finance", "auditor"},
    "/api/v1/policy": {"admin", "policy_owner", "auditor"},
    "/api/v1/exemptions": {"admin", "policy_owner", "auditor"},
    "/api/v1/audit": {"admin", "auditor"},
    "/api/v1/keys": {"admin", "auditor"},
    "/api/v1/agents": {"admin", "auditor"},
}


def test_each_role_reads_what_it_may(gateway: Gateway) -> None:
    for path, allowed in READS.items():
        for role in ("admin", "policy_owner", "finance", "auditor"):
            status, body = _as(gateway, role, "GET", path)
            if role in allowed:
                assert status == 200, (role, path, body)
            else:
                assert status == 403 and body["error"]["roles"] == sorted(allowed), (role, path, body)
    # what calls said (captured prompts and responses) is for the admin and the auditor
    assert _as(gateway, "finance", "GET", "/api/v1/events?include=content")[0] == 403
    assert _as(gateway, "auditor", "GET", "/api/v1/events?include=content")[0] == 200
    assert _as(gateway, "policy_owner", "GET", "/api/v1/events/ev-1")[0] == 403
    # no session, a forged one, or a wrong bearer token next to a good session: 401 as before
    assert raw_request(gateway.port, "GET", "/api/v1/usage")[0] == 401
    forged = role_cookie("not-the-admin-token", "mallory", "admin")
    assert raw_request(gateway.port, "GET", "/api/v1/usage", None, {"Cookie": forged})[0] == 401
    assert _as(gateway, "admin", "GET", "/api/v1/usage", headers={"Authorization": "Bearer wrong"})[0] == 401


def test_writes_by_session_need_the_csrf_header_and_are_the_users(gateway: Gateway) -> None:
    rules = {"rules": [{"id": "no-o1", "scope": "org", "severity": "BLOCK",
                        "condition": {"type": "MODEL_DENYLIST", "models": ["o1"]}}]}
    status, body = _as(gateway, "policy_owner", "PUT", "/api/v1/policy", rules, name="pat")
    assert status == 403 and body["error"]["code"] == "csrf_required"
    token = _csrf(gateway, "policy_owner", "pat")
    status, body = _as(gateway, "policy_owner", "PUT", "/api/v1/policy", rules, name="pat",
                       headers={"X-CSRF-Token": token, "X-Tollhouse-Actor": "mallory"})
    assert status == 200, body
    assert json.loads(gateway.get("/api/v1/policy")[1])["actor"] == "pat"  # the session's user, not the header
    # a token is bound to its session: pat's token is worthless with another's cookie
    assert _as(gateway, "policy_owner", "PUT", "/api/v1/policy", rules, name="quinn",
               headers={"X-CSRF-Token": token})[0] == 403
    # the auditor writes nothing; finance cannot change policy; keys are the admin's
    for role, method, path, data in (("auditor", "PUT", "/api/v1/policy", rules),
                                     ("finance", "POST", "/api/v1/policy/rollback", {"version": 1}),
                                     ("policy_owner", "POST", "/api/v1/keys", {"user": "alice"})):
        status, body = _as(gateway, role, method, path, data, headers={"X-CSRF-Token": _csrf(gateway, role)})
        assert status == 403 and body["error"]["code"] == "forbidden", (role, path, body)
    status, body = _as(gateway, "admin", "POST", "/api/v1/keys", {"user": "alice"},
                       headers={"X-CSRF-Token": _csrf(gateway, "admin")})
    assert status == 201, body
