"""Who may call a route: the check the app makes before a handler runs (gateway/router.py Auth).

- The API (`Auth.user`): the admin token as a bearer token is the admin; without a bearer token, a console
  session cookie is accepted with the session's role. A session's writes (any method but GET and HEAD) also
  need the `X-CSRF-Token` header (console/csrf.py token: the pages hand it to their scripts), so another site
  can never make a signed-in browser change anything. A role the route does not list gets 403 naming the roles
  that may.
- Console pages (`Auth.page`): a session cookie or the admin token; an anonymous browser is sent to the sign-in,
  a role the page does not list gets the 403 page.
"""

from __future__ import annotations

import hmac

from tollhouse.console import csrf, render
from tollhouse.gateway.admin import api_error, authorized, locked_message, locked_out
from tollhouse.gateway.console_session import ADMIN_ROLE, ConsoleUser, session_user, sign_in_redirect, signed_in
from tollhouse.gateway.http import Request, Response, json_response
from tollhouse.gateway.policy_api import actor_header
from tollhouse.gateway.router import Auth, Route
from tollhouse.gateway.state import GatewayState

CSRF_HEADER = "x-csrf-token"
_READS = ("GET", "HEAD")
UNAUTHORIZED = ("missing or wrong admin token: send 'Authorization: Bearer <admin_token>' (config admin_token or "
                "TOLLHOUSE_ADMIN_TOKEN)")


def refusal(route: Route, request: Request, state: GatewayState) -> Response | None:
    """None when the caller may go on (`request.user` then names who signed in); else the answer refusing it."""
    auth = route.auth
    if auth is Auth.public or auth is Auth.agent:  # the agent routes check their own tokens
        return None
    if auth is Auth.page:
        return _page(route, request, state)
    if request.header("authorization") is not None:
        if (wait := locked_out(request, state)) is not None:
            resp = api_error(429, locked_message(wait), "too_many_failed_sign_ins")
            resp.headers.append(("retry-after", str(wait)))
            return resp
        if not authorized(request, state):
            return api_error(401, UNAUTHORIZED, "unauthorized")
        request.user = ConsoleUser(actor_header(request), ADMIN_ROLE)
        return None
    user = session_user(request, state)
    if user is None:
        return api_error(401, UNAUTHORIZED, "unauthorized")
    if request.method not in _READS and not _csrf_ok(request, state):
        return api_error(403, f"{request.method} {request.path} with a console session needs the X-CSRF-Token "
                         "header (the csrf token of a console page); scripts of other sites cannot send it",
                         "csrf_required")
    if user.role not in route.roles:
        return forbidden(route, request, user)
    request.user = user
    return None


def forbidden(route: Route, request: Request, user: ConsoleUser) -> Response:
    roles = sorted(route.roles)
    return json_response({"error": {
        "message": f"your role ({user.role}) may not {request.method} {request.path}; it needs the role "
                   f"{' or '.join(roles)}. Ask a Tollhouse admin if you need it.",
        "code": "forbidden", "roles": roles}}, 403)


def _csrf_ok(request: Request, state: GatewayState) -> bool:
    expected = csrf.token(request, state)
    sent = request.header(CSRF_HEADER) or ""
    return bool(expected) and hmac.compare_digest(sent.encode(), expected.encode())


def _page(route: Route, request: Request, state: GatewayState) -> Response | None:
    user = signed_in(request, state, actor_header(request))
    if user is None:
        target = request.path + (f"?{request.query_string}" if request.query_string else "")
        return sign_in_redirect(target)
    request.user = user
    if user.role not in route.roles:
        allowed = ", ".join(sorted(route.roles))
        return render.error_page(request, state, user, 403, f"Your role ({user.role}) may not open this page; it "
                                 f"is for {allowed}. Ask a Tollhouse admin if you need it.")
    return None
