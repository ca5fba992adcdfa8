"""Single sign-on to the console against a real OpenID Connect provider the tests start (tests/oidc_provider.py):
the whole authorization code flow over real HTTP with a cookie jar, roles from console.roles (email, group, role
claim), users named by their directory person, a signed-in person with no role, refused state, nonce, ID token
and PKCE verifier, sessions that expire, and CSRF on sign-out and on writes through the API."""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from conftest import ADMIN, Gateway
from oidc_provider import OidcProvider, oidc_provider
from tollhouse.console.settings import ConsoleConfig
from tollhouse.gateway.oidc_client import OidcClient, OidcError, Pending
from tollhouse.gateway.sso import role_of

CLIENT = "tollhouse-console"
DIRECTORY = {"org": "acme", "teams": [{"id": "platform"}],
             "people": [{"id": "ada", "team": "platform", "email": "Ada.Lovelace@acme.example"}]}
ROLES = {"admin": ["boss@acme.example"], "policy_owner": ["group:ai-governance"], "finance": ["fred@acme.example"],
         "auditor": ["group:security"]}


class Clock:
    """Real time, moved forward by `skip` (the gateway's clock: sessions expire without waiting)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class Browser:
    """A browser's cookie jar and a request that does not follow redirects (each hop is looked at)."""

    def __init__(self) -> None:
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect())

    def go(self, url: str, method: str = "GET", form: dict[str, str] | None = None,
           headers: dict[str, str] | None = None) -> tuple[int, str, Any]:
        data = urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        if data is not None:
            req.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            with self.opener.open(req, timeout=10) as resp:
                return resp.status, resp.read().decode(), resp.headers
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(), err.headers

    def cookie(self, name: str, path: str) -> str | None:
        return next((c.value for c in self.jar if c.name == name and c.path == path), None)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.fixture
def idp() -> Iterator[OidcProvider]:
    with oidc_provider() as provider:
        provider.set_user("u-ada", {"email": "ada.lovelace@acme.example", "email_verified": True,
                                    "groups": ["ai-governance", "staff"]})
        provider.set_user("u-fred", {"email": "fred@acme.example"})
        provider.set_user("u-sam", {"email": "sam@acme.example", "groups": ["security"]})
        provider.set_user("u-nobody", {"email": "nobody@acme.example", "groups": ["staff"]})
        yield provider


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def gw(idp: OidcProvider, clock: Clock, tmp_path: Path) -> Iterator[Gateway]:
    gateway = Gateway({"directory": DIRECTORY, "console": {
        "oidc": {"issuer": idp.url, "client_id": CLIENT, "client_secret": "s3cret"}, "roles": ROLES}},
        tmp_path / "gw", clock=clock).start()
    yield gateway
    gateway.stop()


def sign_in(gw: Gateway, idp: OidcProvider, sub: str, browser: Browser | None = None,
            next_path: str = "/console/") -> tuple[Browser, int, str, Any]:
    """The whole flow: the sign-in page's SSO link, the provider's form, back to the gateway."""
    browser = browser or Browser()
    status, page, _ = browser.go(f"{gw.url}/console/login?next={next_path}")
    assert status == 200
    link = re.search(r'<a id="sso" href="([^"]+)"', page)
    assert link is not None, page
    status, _, headers = browser.go(gw.url + link.group(1).replace("&amp;", "&"))
    assert status == 303
    back = idp.authorize(headers["location"], sub)
    status, page, headers = browser.go(back)
    return browser, status, page, headers


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found is not None, page
    return found.group(1)


def test_code_flow_signs_in_with_the_role_and_the_directory_name(gw: Gateway, idp: OidcProvider) -> None:
    browser = Browser()
    status, page, headers = browser.go(f"{gw.url}/console/login/sso?next=/console/usage")
    assert status == 303
    request = parse_qs(urlsplit(headers["location"]).query)
    assert request["code_challenge_method"] == ["S256"] and len(request["code_challenge"][0]) == 43
    assert request["response_type"] == ["code"] and request["client_id"] == [CLIENT]
    assert request["scope"] == ["openid email profile"] and request["nonce"][0] and request["state"][0]
    assert request["redirect_uri"] == [f"{gw.url}/console/login/sso/callback"]
    pending = browser.cookie("tollhouse_sso", "/console/login/sso/callback")
    assert pending is not None and request["nonce"][0] not in pending  # the nonce is kept signed, not readable

    status, page, headers = browser.go(idp.authorize(headers["location"], "u-ada"))
    assert status == 200 and "Signed in as ada (policy_owner)." in page  # the directory's person id
    assert 'content="0;url=/console/usage"' in page  # where the sign-in started
    cookies = headers.get_all("set-cookie")
    assert any(c.startswith("tollhouse_sso=;") and "Max-Age=0" in c for c in cookies)  # the pending sign-in ends
    sessions = [c for c in cookies if c.startswith("tollhouse_console=")]
    assert sorted(re.search(r"Path=([^;]+)", c).group(1) for c in sessions) == ["/api/v1/", "/console/"]  # type: ignore[union-attr]
    assert all("HttpOnly" in c and "SameSite=Strict" in c and "Max-Age=43200" in c for c in sessions)

    status, page, _ = browser.go(f"{gw.url}/console/")
    assert status == 200 and "ada (policy_owner)" in page
    # The API with the session: what the role reads; never what it does not; writes only with the CSRF header.
    assert browser.go(f"{gw.url}/api/v1/policy")[0] == 200
    assert browser.go(f"{gw.url}/api/v1/usage")[0] == 200
    status, body, _ = browser.go(f"{gw.url}/api/v1/audit")
    error = json.loads(body)["error"]
    assert status == 403 and error["code"] == "forbidden" and error["roles"] == ["admin", "auditor"]
    assert "your role (policy_owner) may not GET /api/v1/audit" in error["message"]
    rules = {"rules": [{"id": "no-o1", "scope": "org", "action": {"type": "BLOCK"},
                        "condition": {"type": "MODEL_DENYLIST", "models": ["o1"]}}]}
    put = {"Content-Type": "application/json"}
    req_body = json.dumps(rules).encode()
    status, body, _ = _send(browser, f"{gw.url}/api/v1/policy", "PUT", req_body, put)
    assert status == 403 and json.loads(body)["error"]["code"] == "csrf_required"
    status, body, _ = _send(browser, f"{gw.url}/api/v1/policy", "PUT", req_body, {**put, "X-CSRF-Token": "0" * 64})
    assert status == 403
    status, body, _ = _send(browser, f"{gw.url}/api/v1/policy", "PUT", req_body,
                            {**put, "X-CSRF-Token": csrf_of(page)})
    assert status == 200, body
    assert json.loads(browser.go(f"{gw.url}/api/v1/policy")[1])["actor"] == "ada"  # the change is ada's


def _send(browser: Browser, url: str, method: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, Any]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with browser.opener.open(req, timeout=10) as resp:
            return resp.status, resp.read().decode(), resp.headers
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(), err.headers


def test_roles_by_email_and_group_and_who_has_none(gw: Gateway, idp: OidcProvider) -> None:
    for sub, name, role in (("u-fred", "fred@acme.example", "finance"), ("u-sam", "sam@acme.example", "auditor")):
        browser, status, page, _ = sign_in(gw, idp, sub)
        assert status == 200 and f"Signed in as {name} ({role})." in page
        assert f"{name} ({role})" in browser.go(f"{gw.url}/console/")[1]
    # finance reads usage, not policy; the auditor reads the audit trail and writes nothing
    fred = sign_in(gw, idp, "u-fred")[0]
    assert fred.go(f"{gw.url}/api/v1/reports/spend.csv")[0] == 200
    assert fred.go(f"{gw.url}/api/v1/policy")[0] == 403
    sam = sign_in(gw, idp, "u-sam")[0]
    assert sam.go(f"{gw.url}/api/v1/audit")[0] == 200
    status, page, _ = sam.go(f"{gw.url}/console/")
    status, body, _ = _send(sam, f"{gw.url}/api/v1/keys", "POST", b'{"user": "ada"}',
                            {"Content-Type": "application/json", "X-CSRF-Token": csrf_of(page)})
    assert status == 403 and json.loads(body)["error"]["roles"] == ["admin"]

    browser, status, page, headers = sign_in(gw, idp, "u-nobody")
    assert status == 403 and "you have no role in the Tollhouse console" in page
    assert "nobody@acme.example" in page and "tollhouse_console=" not in (headers.get("set-cookie") or "")
    status, _, headers = browser.go(f"{gw.url}/console/")
    assert status == 303 and headers["location"].startswith("/console/login")
    assert browser.go(f"{gw.url}/api/v1/usage")[0] == 401
    # the directory in force names people: fred, added through the API, is shown by his id from then on
    people = [*DIRECTORY["people"], {"id": "fred", "team": "platform", "email": "fred@acme.example"}]
    assert gw.request("PUT", "/api/v1/directory", {**DIRECTORY, "people": people})[0] == 200
    assert "Signed in as fred (finance)." in sign_in(gw, idp, "u-fred")[2]
    audit = json.loads(gw.get("/api/v1/audit")[1])["entries"]
    signed = [(e["actor"], e["data"]["role"]) for e in audit if e["kind"] == "console.sign_in"]
    assert ("nobody@acme.example", None) in signed and ("sam@acme.example", "auditor") in signed


def test_role_mapping_rules() -> None:
    config = ConsoleConfig.model_validate({"oidc": {"issuer": "https://idp.example", "client_id": "c",
                                                    "role_claim": "tollhouse_role"}, "roles": ROLES})
    assert role_of(config, {"email": "BOSS@acme.example", "groups": ["security"]}) == "admin"  # the first role
    assert role_of(config, {"email": "x@acme.example", "groups": ["security", "ai-governance"]}) == "policy_owner"
    assert role_of(config, {"email": "x@acme.example", "tollhouse_role": "finance"}) == "finance"  # the claim
    assert role_of(config, {"email": "x@acme.example", "tollhouse_role": ["nonsense"]}) is None
    assert role_of(config, {"email": "fred@acme.example", "email_verified": False}) is None  # unverified: not his
    with pytest.raises(ValueError, match="neither an email address nor"):
        ConsoleConfig.model_validate({"roles": {"admin": ["bob"]}})
    with pytest.raises(ValueError, match="must include \"openid\""):
        ConsoleConfig.model_validate({"oidc": {"issuer": "https://idp.example", "client_id": "c",
                                               "scopes": ["email"]}})


def test_tampered_state_nonce_and_code_are_refused(gw: Gateway, idp: OidcProvider) -> None:
    browser = Browser()
    # state: the provider's answer to another sign-in
    _, _, headers = browser.go(f"{gw.url}/console/login/sso")
    back = idp.authorize(headers["location"], "u-ada")
    status, page, _ = browser.go(_with_query(back, state="forged"))
    assert status == 400 and "does not belong to this sign-in" in page
    assert "tollhouse_console" not in {c.name for c in browser.jar}
    # nonce: the authorization request altered on its way to the provider
    _, _, headers = browser.go(f"{gw.url}/console/login/sso")
    back = idp.authorize(_with_query(headers["location"], nonce="replayed"), "u-ada")
    status, page, _ = browser.go(back)
    assert status == 401 and "ID token was refused" in page and "nonce" in page
    # PKCE: a code issued to one sign-in, delivered into another (a stolen code): the provider refuses it
    _, _, first = browser.go(f"{gw.url}/console/login/sso")
    stolen = parse_qs(urlsplit(idp.authorize(first["location"], "u-ada")).query)["code"][0]
    _, _, second = browser.go(f"{gw.url}/console/login/sso")
    state = parse_qs(urlsplit(second["location"]).query)["state"][0]
    status, page, _ = browser.go(f"{gw.url}/console/login/sso/callback?{urlencode({'code': stolen, 'state': state})}")
    assert status == 401 and "refused the code" in page and idp.pkce.refused == 1
    # no pending sign-in at all (another browser), and an error from the provider
    status, page, _ = Browser().go(back)
    assert status == 400 and "not started here" in page
    status, page, _ = browser.go(f"{gw.url}/console/login/sso/callback?error=access_denied")
    assert status == 401 and "access_denied" in page
    assert "tollhouse_console" not in {c.name for c in browser.jar}


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | changes
    return urlunsplit(parts._replace(query=urlencode(query)))


def test_the_id_token_is_checked_against_the_providers_keys(idp: OidcProvider) -> None:
    """The client's checks on a real ID token: signature, issuer, audience, expiry."""
    client = OidcClient()

    async def run() -> None:
        now = time.time()
        provider = await client.provider(idp.url, now)
        pending = Pending.new("http://127.0.0.1:9/cb", "/console/")
        from tollhouse.gateway.oidc_client import authorization_url

        back = idp.authorize(authorization_url(provider, CLIENT, ("openid", "email"), pending), "u-ada")
        code = parse_qs(urlsplit(back).query)["code"][0]
        tokens = await client.exchange(provider, CLIENT, "s3cret", code, pending)
        token = tokens["id_token"]
        claims = await client.verify(provider, token, CLIENT, pending.nonce, tokens["access_token"], now)
        assert claims["email"] == "ada.lovelace@acme.example" and claims["iss"] == idp.url
        head, body, signature = token.split(".")
        forged = json.loads(_b64decode(body)) | {"email": "boss@acme.example"}
        refused = {
            "signature": f"{head}.{_b64encode(json.dumps(forged).encode())}.{signature}",
            "another key": jwt.encode(json.loads(_b64decode(head)), forged, RSAKey.generate_key(2048)),
        }
        for what, bad in refused.items():
            with pytest.raises(OidcError, match="ID token was refused"):
                await client.verify(provider, bad, CLIENT, pending.nonce, None, now)
                pytest.fail(f"a forged ID token ({what}) passed")
        with pytest.raises(OidcError, match="aud"):
            await client.verify(provider, token, "another-client", pending.nonce, None, now)
        with pytest.raises(OidcError, match="exp"):
            await client.verify(provider, token, CLIENT, pending.nonce, None, now + 2 * 3600)
        with pytest.raises(OidcError, match="nonce"):
            await client.verify(provider, token, CLIENT, "another nonce", None, now)

    with ThreadPoolExecutor(1) as thread:  # its own event loop (Playwright's sync API may hold this thread's)
        thread.submit(asyncio.run, run()).result()


def _b64decode(part: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _b64encode(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def test_sessions_expire_and_sign_out_needs_the_csrf_token(gw: Gateway, idp: OidcProvider, clock: Clock) -> None:
    browser, status, _, _ = sign_in(gw, idp, "u-ada")
    assert status == 200
    status, page, _ = browser.go(f"{gw.url}/console/")
    assert status == 200
    assert browser.go(f"{gw.url}/console/logout", "POST", {})[0] == 400  # no token: still signed in
    assert browser.go(f"{gw.url}/console/logout", "POST", {"csrf": "f" * 64})[0] == 400
    assert browser.go(f"{gw.url}/console/")[0] == 200
    status, _, headers = browser.go(f"{gw.url}/console/logout", "POST", {"csrf": csrf_of(page)})
    assert status == 303 and headers["location"] == "/console/login"
    assert [c for c in headers.get_all("set-cookie") if "Max-Age=0" in c and c.startswith("tollhouse_console=;")]
    assert browser.go(f"{gw.url}/console/")[0] == 303

    browser, status, _, _ = sign_in(gw, idp, "u-ada")
    assert browser.go(f"{gw.url}/api/v1/usage")[0] == 200
    clock.offset = 12 * 3600 + 1  # console.session_hours (12) later
    assert browser.go(f"{gw.url}/console/")[0] == 303
    assert browser.go(f"{gw.url}/api/v1/usage")[0] == 401


def test_the_sign_in_page_offers_sso_only_when_configured(tmp_path: Path) -> None:
    gw = Gateway({}, tmp_path / "plain").start()
    try:
        status, page, _ = Browser().go(f"{gw.url}/console/login")
        assert status == 200 and 'id="sso"' not in page and 'name="token"' in page
        status, page, _ = Browser().go(f"{gw.url}/console/login/sso")
        assert status == 404 and "console.oidc" in page
    finally:
        gw.stop()
    gw = Gateway({"console": {"session_hours": 1, "oidc": {"issuer": "http://127.0.0.1:9", "client_id": "c"}}},
                 tmp_path / "down").start()
    try:
        status, page, _ = Browser().go(f"{gw.url}/console/login")
        assert status == 200 and 'id="sso"' in page and 'name="token"' in page  # the admin token form stays
        status, page, _ = Browser().go(f"{gw.url}/console/login/sso")
        assert status == 502 and "could not read the identity provider" in page and "admin token" in page
        status, _, headers = Browser().go(f"{gw.url}/console/login", "POST", {"token": ADMIN, "name": "root"})
        assert status == 303 and "Max-Age=3600" in headers["set-cookie"]  # console.session_hours
        audit = json.loads(gw.get("/api/v1/audit")[1])["entries"]
        assert [(e["actor"], e["data"]) for e in audit if e["kind"] == "console.sign_in"] == [
            ("root", {"via": "admin_token", "role": "admin"})]
    finally:
        gw.stop()


@pytest.mark.slow
def test_sign_in_with_sso_in_a_real_browser(gw: Gateway, idp: OidcProvider, page: Any) -> None:
    """Chromium through the provider's own form and back to the page the sign-in started from, signed in there
    and on the API; the sign-out button works. (Provider and gateway share a host here, so this does not show the
    cross-site case the callback's self-refreshing page is for.)"""
    # the provider's form asks a CDN for its style sheet: nothing leaves this machine, it gets an empty one
    page.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"),
               lambda route: route.fulfill(status=200, body="", content_type="text/css"))
    page.goto(f"{gw.url}/console/login?next=/console/usage")
    page.click("#sso")
    page.wait_for_url(f"{idp.url}/oauth2/authorize*")
    page.get_by_placeholder("sub").fill("u-ada")
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_url(f"{gw.url}/console/usage*")
    assert "ada (policy_owner)" in page.inner_text("header")
    page.goto(f"{gw.url}/api/v1/usage")  # the API the pages fetch from, with the same session
    assert json.loads(page.inner_text("body"))["timezone"] == "UTC"
    page.goto(f"{gw.url}/console/")
    page.click("form.signout button")
    page.wait_for_url(f"{gw.url}/console/login")
    page.goto(f"{gw.url}/console/")
    page.wait_for_url(f"{gw.url}/console/login?next=/console/")
