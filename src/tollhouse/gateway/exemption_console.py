"""The exemption workflow's console pages (server-rendered, every value escaped).

For requesters, no sign-in: the form a block error's exemption link opens, pre-filled with the call
(GET /console/exemptions/new?...), filing it (POST /console/exemptions), and the request's status page
(GET /console/exemptions/{id}).

The console sign-in with the admin token (POST /console/login sets the signed session cookies of
gateway/console_session.py, role admin, naming the reviewer; the token never appears in a URL), the link to
single sign-on when console.oidc is configured (gateway/sso.py), and sign-out (with the page's CSRF token).
The policy owner's queue, its decisions and the history are console pages on the shared layout:
console/exemptions.py. Cookie-authenticated posts from another origin are refused.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from urllib.parse import parse_qsl, quote, urlsplit

from tollhouse.console import csrf, render
from tollhouse.control.exemptions import (
    MAX_FIELD,
    MAX_JUSTIFICATION,
    ExemptionError,
    ExemptionProblems,
)
from tollhouse.control.overrides import grant_of
from tollhouse.events.model import iso_ts
from tollhouse.events.records import APPROVED, DENIED, OVERRIDE, PENDING, REVOKED, Exemption
from tollhouse.gateway import exemptions
from tollhouse.gateway.admin import locked_message
from tollhouse.gateway.client_address import client_address
from tollhouse.gateway.console_session import (
    ADMIN_ROLE,
    LOGIN_PATH,
    ConsoleUser,
    begin_session,
    safe_next,
    session_user,
    signed_out_cookies,
)
from tollhouse.gateway.http import BodyTooLarge, Request, Response
from tollhouse.gateway.sso import START_PATH
from tollhouse.gateway.state import GatewayState

QUEUE_PATH = "/console/exemptions"
_MAX_FORM = 64 * 1024
_PREFILL = ("subject", "rule", "provider", "model", "team", "project", "ts")
_LABELS = {"subject": "Who was blocked", "rule": "Rule", "provider": "Provider", "model": "Model", "team": "Team",
           "project": "Project", "ts": "Time of the call", "requester": "Your name (if not the subject)"}


def _see_other(location: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(303, b"", [("location", location), *(headers or [])])


def _ts(ts_ms: int | None) -> str:
    return iso_ts(ts_ms) if ts_ms is not None else ""


async def _form(request: Request) -> dict[str, str]:
    try:
        raw = await request.body(_MAX_FORM)
    except BodyTooLarge:
        raise ExemptionError(413, "request_too_large", f"The form is larger than {_MAX_FORM} bytes.") from None
    return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))


# requesters: the pre-filled form, filing it, the status page


def _request_form(request: Request, state: GatewayState, values: Mapping[str, str], problems: list[str],
                  status: int = 200) -> Response:
    rule = next((r for r in state.policy.current.rules if r.id == values.get("rule")), None)
    fields = [{"name": name, "label": _LABELS[name], "value": values.get(name, ""),
               "required": name in ("subject", "rule")} for name in (*_PREFILL, "requester")]
    return render.public_page(request, state, "exemption_request.html", "Request an exemption", status,
                              rule=rule, problems=problems, fields=fields, action=QUEUE_PATH, max_field=MAX_FIELD,
                              justification=values.get("justification", ""), max_justification=MAX_JUSTIFICATION)


async def new_request(request: Request, state: GatewayState) -> Response:
    query = request.query
    return _request_form(request, state, {k: query.get(k, "") for k in _PREFILL}, [])


async def file_request(request: Request, state: GatewayState) -> Response:
    form: dict[str, str] = {}
    try:
        form = await _form(request)
        filed = await exemptions.file_request(state, form,
                                              client_address(request, state.settings.identity.trusted_proxies))
    except ExemptionProblems as exc:
        return _request_form(request, state, form, exc.messages, 400)
    except ExemptionError as exc:
        if exc.existing is not None:
            return _see_other(f"{QUEUE_PATH}/{exc.existing.id}?existing=1")
        return render.notice(request, state, "Not filed", exc.status, errors=exc.messages)
    return _see_other(f"{QUEUE_PATH}/{filed.exemption.id}?filed=1")


def outcome(state: GatewayState, x: Exemption) -> str:
    if x.status == PENDING:
        return "Waiting for the AI policy owner's decision. Come back to this page to see it."
    by = f"{x.reviewer or 'the policy owner'} at {_ts(x.decided_ms)}"
    if x.status == DENIED:
        return f"Denied by {by}: {x.note or 'no reason given'}"
    if x.decision_kind != OVERRIDE:
        return f"Approved by {by} as a change to the policy."
    note = f" Note: {x.note}" if x.note else ""
    if x.status == REVOKED:
        return (f"Approved by {by}, then revoked by {x.revoked_by or 'the policy owner'} at {_ts(x.revoked_ms)}: "
                f"rule {x.rule_id} applies to {x.subject} again.{note}")
    now_ms = int(state.clock() * 1000)
    until = "until" if (x.expires_ms or 0) > now_ms else "; it expired at"
    return (f"Approved by {by}: calls by {x.subject} {scope_words(x)} that rule {x.rule_id} blocks are allowed {until} "
            f"{_ts(x.expires_ms)}.{note}")


def scope_words(x: Exemption) -> str:
    """What an approved override covers, in words."""
    grant = grant_of(x) if x.status in (APPROVED, REVOKED) else None
    if grant is None:
        return ""
    models = "any model" if "*" in grant.models else "model " + ", ".join(grant.models)
    providers = "any provider" if "*" in grant.providers else "provider " + ", ".join(grant.providers)
    return f"to {models} of {providers}"


async def status_page(request: Request, state: GatewayState) -> Response:
    exemption_id = request.params["id"]
    x = await state.runner.run(lambda s: s.exemption(exemption_id))
    if x is None:
        return render.notice(request, state, "Not found", 404,
                             paragraphs=[f"No exemption request has the id {exemption_id}."])
    banner = None
    if request.query.get("filed"):
        banner = "Your request was filed. Keep this page's address to follow it."
    elif request.query.get("existing"):
        banner = "You already have a pending request for this rule; here it is."
    details = [("Id", x.id), ("Subject", x.subject), ("Rule", x.rule_id), ("Provider", x.provider),
               ("Model", x.model), ("Team", x.team), ("Project", x.project), ("Time of the call", _ts(x.call_ts_ms)),
               ("Requested", _ts(x.created_ms)), ("Requested by", x.requester), ("Justification", x.justification)]
    return render.public_page(request, state, "exemption_status.html", f"Exemption request {x.id}", banner=banner,
                              decision=x.status, outcome=outcome(state, x), details=details)


# the console sign-in


def cross_site(request: Request) -> bool:
    """A browser post from another origin (SameSite=Strict already keeps the cookie off it; belt and braces)."""
    origin = request.header("origin")
    if origin is None:
        return False
    return origin == "null" or urlsplit(origin).netloc != (request.header("host") or "")


def _login_page(request: Request, state: GatewayState, problem: str | None = None, status: int = 401,
                next_path: str | None = None, headers: list[tuple[str, str]] | None = None) -> Response:
    oidc = state.settings.console.oidc
    sso = None if oidc is None else {"label": oidc.label,
                                     "href": f"{START_PATH}?next={quote(safe_next(next_path), safe='/')}"}
    return render.public_page(request, state, "login.html", "Sign in to the Tollhouse console", status,
                              headers or [], problem=problem, sso=sso, action=LOGIN_PATH, max_field=MAX_FIELD,
                              next=safe_next(next_path))


async def login_form(request: Request, state: GatewayState) -> Response:
    return _login_page(request, state, status=200, next_path=request.query.get("next"))


async def login(request: Request, state: GatewayState) -> Response:
    """The admin token signs in with role admin (the role is kept in the session for roles to come)."""
    if cross_site(request):
        return render.notice(request, state, "Refused", 403, errors=["Sign-in from another site is refused."])
    try:
        form = await _form(request)
    except ExemptionError as exc:
        return _login_page(request, state, str(exc), exc.status)
    address = client_address(request, state.settings.identity.trusted_proxies)
    if (wait := state.guard.locked(address)) is not None:
        return _login_page(request, state, f"Not signed in: {locked_message(wait)}.", 429,
                           form.get("next"), [("retry-after", str(wait))])
    token = form.get("token", "")
    if not token or not hmac.compare_digest(token.encode(), state.admin_token.encode()):
        state.guard.failed(address, "console sign-in form")
        return _login_page(request, state,
                           "That is not the admin token (config admin_token or TOLLHOUSE_ADMIN_TOKEN).",
                           next_path=form.get("next"))
    name = form.get("name", "").strip()[:MAX_FIELD] or "admin"
    state.audit.record("console.sign_in", name, {"via": "admin_token", "role": ADMIN_ROLE})
    cookies, began = begin_session(state, ConsoleUser(name, ADMIN_ROLE), "admin_token")
    await state.sessions.began(began)
    return _see_other(safe_next(form.get("next")), cookies)


async def logout(request: Request, state: GatewayState) -> Response:
    """Sign out: the session cookies are cleared. A signed-in browser must send the form's CSRF token."""
    if cross_site(request):
        return render.notice(request, state, "Refused", 403, errors=["Refused: the request came from another site."])
    try:
        form = await _form(request)
    except ExemptionError as exc:
        return render.notice(request, state, "Not signed out", exc.status, errors=exc.messages)
    if not csrf.valid(request, state, form):
        return render.notice(request, state, "Not signed out", 400, errors=[
            "The sign-out form is missing its security token or it is stale (signed in again since?). Reload the "
            "page and sign out again."])
    user = session_user(request, state)
    if user is not None and user.session is not None:  # the session ends everywhere, copies of the cookie too
        await state.sessions.sign_out(user.session)
        state.audit.record("console.sign_out", user.name, {"role": user.role})
    return _see_other(LOGIN_PATH, signed_out_cookies(state))
