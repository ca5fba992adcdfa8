"""Single sign-on to the console (OpenID Connect, `console.oidc`): the sign-in start, the provider's callback,
and who the signed-in person is to Tollhouse.

GET /console/login/sso sends the browser to the provider with a fresh state, nonce and PKCE verifier, kept in
a signed cookie (10 minutes, only for the callback path). GET /console/login/sso/callback checks the state,
exchanges the code with the verifier, verifies the ID token (gateway/oidc_client.py), maps the person to a role
(`console.roles`: email addresses or "group:NAME"; or the claim `console.oidc.role_claim` names it) and to a
person of the directory by email (their id is the user's name), and starts a console session. A person with no
role is told so and gets no session and no data.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import orjson

from tollhouse.console import render
from tollhouse.console.settings import ROLE_ORDER, ConsoleConfig, OidcConfig
from tollhouse.gateway.console_session import (
    ConsoleUser,
    begin_session,
    cookie_attributes,
    cookie_value,
    safe_next,
)
from tollhouse.gateway.http import Request, Response
from tollhouse.gateway.oidc_client import OidcError, Pending, authorization_url
from tollhouse.gateway.state import GatewayState

log = logging.getLogger("tollhouse")

START_PATH = "/console/login/sso"
CALLBACK_PATH = "/console/login/sso/callback"
PENDING_COOKIE = "tollhouse_sso"
PENDING_S = 600
_MAX_CLAIM = 320


def role_of(config: ConsoleConfig, claims: Mapping[str, Any]) -> str | None:
    """The person's console role: the role claim when configured and valid, else the first role (admin,
    policy_owner, finance, auditor) whose console.roles entry lists their email or one of their groups."""
    oidc = config.oidc
    if oidc is not None and oidc.role_claim:
        named = set(_strings(claims.get(oidc.role_claim)))
        for role in ROLE_ORDER:
            if role in named:
                return role
    email = _email(claims)
    groups = {f"group:{g}" for g in _strings(claims.get(oidc.groups_claim if oidc else "groups"))}
    for role in ROLE_ORDER:
        for entry in config.roles.get(role, ()):
            if (email is not None and entry.lower() == email) or entry in groups:
                return role
    return None


def _strings(value: object) -> Iterable[str]:
    if isinstance(value, str):
        return value.replace(",", " ").split()
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return ()


def _email(claims: Mapping[str, Any]) -> str | None:
    """The verified-looking email of the ID token (an email_verified of false is not trusted)."""
    email = claims.get("email")
    if not isinstance(email, str) or "@" not in email or claims.get("email_verified") is False:
        return None
    return email.strip().lower()[:_MAX_CLAIM]


def user_name(state: GatewayState, claims: Mapping[str, Any]) -> str:
    """The person of the directory in force whose email is the token's (their id), else the email, else the
    subject."""
    email = _email(claims)
    if email is not None:
        for person in state.directory.current.config.people:
            if person.email and person.email.strip().lower() == email:
                return person.id
        return email
    return str(claims.get("sub", "unknown"))[:_MAX_CLAIM]


# the pending sign-in, signed in a cookie


def _sign(state: GatewayState, payload: bytes) -> str:
    return hmac.new(state.admin_token.encode(), b"tollhouse-console-sso\0" + payload, hashlib.sha256).hexdigest()


def pending_cookie(state: GatewayState, pending: Pending) -> str:
    payload = orjson.dumps({"state": pending.state, "nonce": pending.nonce, "verifier": pending.verifier,
                            "redirect_uri": pending.redirect_uri, "next": pending.next,
                            "exp": int(state.clock()) + PENDING_S})
    value = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    # SameSite=Lax: the provider's redirect back is a cross-site navigation
    return (f"{PENDING_COOKIE}={value}.{_sign(state, payload)}; "
            f"{cookie_attributes(state, PENDING_S, CALLBACK_PATH, 'Lax')}")


def _clear_pending(state: GatewayState) -> tuple[str, str]:
    return ("set-cookie", f"{PENDING_COOKIE}=; {cookie_attributes(state, 0, CALLBACK_PATH, 'Lax')}")


def read_pending(request: Request, state: GatewayState) -> Pending | None:
    raw = cookie_value(request, PENDING_COOKIE) or ""
    value, _, signature = raw.rpartition(".")
    try:
        payload = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None
    if not value or not hmac.compare_digest(signature.encode(), _sign(state, payload).encode()):
        return None
    data = orjson.loads(payload)
    if not isinstance(data, dict) or int(data.get("exp", 0)) <= state.clock():
        return None
    return Pending(str(data["state"]), str(data["nonce"]), str(data["verifier"]), str(data["redirect_uri"]),
                   str(data["next"]))


# the two routes


def _again(next_path: str) -> list[dict[str, str]]:
    return [{"label": "Sign in again", "href": f"{START_PATH}?next={quote(next_path, safe='/')}"},
            {"label": "use the admin token", "href": f"/console/login?next={quote(next_path, safe='/')}"}]


_NOT_SET_UP = "This gateway has no console.oidc configuration."


def _redirect_uri(request: Request, state: GatewayState, oidc: OidcConfig) -> str:
    if oidc.redirect_url:
        return oidc.redirect_url
    scheme = "https" if state.console_url.startswith("https:") else "http"
    return f"{scheme}://{request.header('host') or '127.0.0.1'}{CALLBACK_PATH}"


async def start(request: Request, state: GatewayState) -> Response:
    """Send the browser to the identity provider."""
    oidc = state.settings.console.oidc
    if oidc is None:
        return render.notice(request, state, "Single sign-on is not set up", 404, paragraphs=[_NOT_SET_UP],
                             links=[{"label": "Sign in with the admin token", "href": "/console/login"}])
    next_path = safe_next(request.query.get("next"))
    try:
        provider = await state.sso.provider(oidc.issuer, state.clock())
    except OidcError as exc:
        log.warning("console single sign-on: %s", exc)
        return render.notice(request, state, "Single sign-on is unavailable", 502, paragraphs=[f"{exc}."],
                             links=_again(next_path))
    pending = Pending.new(_redirect_uri(request, state, oidc), next_path)
    location = authorization_url(provider, oidc.client_id, oidc.scopes, pending)
    return Response(303, b"", [("location", location), ("cache-control", "no-store"),
                               ("set-cookie", pending_cookie(state, pending))])


async def callback(request: Request, state: GatewayState) -> Response:
    """The provider sends the browser back: check everything, then sign the person in (or say why not)."""
    oidc = state.settings.console.oidc
    if oidc is None:
        return render.notice(request, state, "Single sign-on is not set up", 404, paragraphs=[_NOT_SET_UP])
    query = request.query
    pending = read_pending(request, state)
    next_path = pending.next if pending is not None else safe_next(None)
    clear = [_clear_pending(state)]
    if "error" in query:
        reason = query.get("error_description") or query["error"]
        return render.notice(request, state, "Not signed in", 401, links=_again(next_path), headers=clear,
                             paragraphs=[f"The identity provider did not sign you in: {reason}."])
    if pending is None:
        return render.notice(request, state, "Not signed in", 400, links=_again(next_path), headers=clear,
                             paragraphs=["This sign-in was not started here, or it took longer than 10 minutes "
                                         "(the browser has no pending sign-in)."])
    if not hmac.compare_digest(query.get("state", "").encode(), pending.state.encode()):
        return render.notice(request, state, "Not signed in", 400, links=_again(next_path), headers=clear,
                             paragraphs=["The answer from the identity provider does not belong to this sign-in "
                                         "(its state does not match)."])
    try:
        provider = await state.sso.provider(oidc.issuer, state.clock())
        tokens = await state.sso.exchange(provider, oidc.client_id, oidc.secret(), query.get("code", ""), pending)
        access = tokens.get("access_token")
        claims = await state.sso.verify(provider, tokens["id_token"], oidc.client_id, pending.nonce,
                                        access if isinstance(access, str) else None, state.clock())
    except OidcError as exc:
        log.warning("console single sign-on refused: %s", exc)
        return render.notice(request, state, "Not signed in", 401, paragraphs=[f"{exc}."], links=_again(next_path),
                             headers=clear)
    role = role_of(state.settings.console, claims)
    name = user_name(state, claims)
    state.audit.record("console.sign_in", name, {"via": "oidc", "role": role, "email": _email(claims),
                                                 "sub": str(claims.get("sub", ""))[:_MAX_CLAIM]})
    if role is None:
        return render.notice(request, state, "No role in the console", 403, headers=clear, paragraphs=[
            f"You are signed in as {name}, but you have no role in the Tollhouse console, so there is nothing to "
            "show you. Ask a Tollhouse admin to give you one (console.roles in the configuration: your email "
            "address or one of your groups)."])
    # A page that moves on by itself rather than a redirect: the session cookie is SameSite=Strict, and a
    # browser leaves it off a request the provider's (cross-site) redirect chain led to.
    cookies, began = begin_session(state, ConsoleUser(name, role), "oidc")
    await state.sessions.began(began)
    headers = [*clear, *cookies]
    return render.notice(request, state, "Signed in", 200, paragraphs=[f"Signed in as {name} ({role})."],
                         links=[{"label": "Continue", "href": next_path, "id": "continue"}], refresh=next_path,
                         headers=headers)

