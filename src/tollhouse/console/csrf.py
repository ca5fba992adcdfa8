"""CSRF protection of console forms: a token bound to the signed-in session, sent back as a hidden field.

The token is an HMAC of the session cookie (keyed by the admin token), so it changes with each sign-in and
is worthless without the cookie. A request authenticated by a bearer token carries no ambient credential and
needs no token. Forms are also SameSite=Strict-cookie only, so this is defence in depth.
"""

from __future__ import annotations

import hashlib
import hmac

from tollhouse.gateway.console_session import COOKIE, cookie_value
from tollhouse.gateway.http import Request
from tollhouse.gateway.state import GatewayState

FIELD = "csrf"


def token(request: Request, state: GatewayState) -> str:
    """The token to put in a form on this page ("" when the request carries no session cookie)."""
    cookie = cookie_value(request, COOKIE)
    if not cookie:
        return ""
    return hmac.new(state.admin_token.encode(), b"tollhouse-console-csrf\0" + cookie.encode(),
                    hashlib.sha256).hexdigest()


def valid(request: Request, state: GatewayState, form: dict[str, str]) -> bool:
    """True when a form post may proceed: no session cookie (bearer-authenticated), or its token matches."""
    expected = token(request, state)
    if not expected:
        return True
    return hmac.compare_digest(form.get(FIELD, "").encode(), expected.encode())
