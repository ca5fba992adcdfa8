"""Who is signed in to the console, and the session cookie that says so.

A session is a signed cookie (HMAC-SHA256 keyed by the admin token) naming the user and their role, when it
ends (console.session_hours, default 12), when it began and its random id. Signing out revokes the id on every
gateway sharing the store, and an admin can revoke all of a user's sessions (gateway/session_revocations.py):
a copy of the cookie then no longer works either. It is set by the admin token sign-in (POST /console/login, role
admin) or by single sign-on (console/sso: role from console.roles), HttpOnly and SameSite=Strict, once for
/console/ (the pages) and once for /api/v1/ (the JSON and CSV the pages fetch); never for the provider paths,
so it never travels to a provider. The admin token as a bearer token is role admin too. Which routes are open
without a session is the router's declaration (gateway/routes.py, Auth.public); the app sends an anonymous
browser anywhere else under /console/ to the sign-in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from tollhouse.gateway.admin import authorized
from tollhouse.gateway.http import Request, Response
from tollhouse.gateway.session_revocations import Session, SignedIn
from tollhouse.gateway.state import GatewayState

COOKIE = "tollhouse_console"
COOKIE_PATHS = ("/api/v1/", "/console/")  # the API the pages fetch from, and the pages
LOGIN_PATH = "/console/login"
DEFAULT_NEXT = "/console/exemptions"
ROLES = ("admin", "policy_owner", "finance", "auditor")  # DESIGN.md, "Seeing and deciding"
ADMIN_ROLE = "admin"

_CONSOLE = "/console/"


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    name: str
    role: str  # one of ROLES
    session: Session | None = None  # the console session signed in (None: the admin token as a bearer token)


def sign_in_redirect(target: str) -> Response:
    location = f"{LOGIN_PATH}?next={quote(safe_next(target), safe='/')}"
    return Response(303, b"", [("location", location), ("cache-control", "no-store")])


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a console path of this gateway only (never another site)."""
    if not value:
        return DEFAULT_NEXT
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith(_CONSOLE) or "\\" in value or value.startswith("//"):
        return DEFAULT_NEXT
    if value.split("?", 1)[0] in (LOGIN_PATH, "/console/logout"):
        return DEFAULT_NEXT
    return value


def _sign(state: GatewayState, payload: str) -> str:
    return hmac.new(state.admin_token.encode(), b"tollhouse-console-session\0" + payload.encode(),
                    hashlib.sha256).hexdigest()


def session_seconds(state: GatewayState) -> int:
    return int(state.settings.console.session_hours * 3600)


def _value(state: GatewayState, role: str, name: str, session: Session) -> str:
    """The cookie's value: expiry (s), role, name (base64url), when it was issued (ms) and the session id, signed
    with the admin token."""
    encoded = base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")
    payload = f"{session.expires_s}.{role}.{encoded}.{session.issued_ms}.{session.id}"
    return f"{payload}.{_sign(state, payload)}"


def _cookies(state: GatewayState, value: str, max_age: int) -> list[tuple[str, str]]:
    return [("set-cookie", f"{COOKIE}={value}; {cookie_attributes(state, max_age, path)}") for path in COOKIE_PATHS]


def begin_session(state: GatewayState, user: ConsoleUser, via: str) -> tuple[list[tuple[str, str]], SignedIn]:
    """A new session for `user` (a new random id): the Set-Cookie headers that sign them in, for the pages and the
    API, and the session as the admins' list keeps it (`Revocations.began`)."""
    if user.role not in ROLES:
        raise ValueError(f"unknown console role {user.role!r}; one of {', '.join(ROLES)}")
    now = state.clock()
    seconds = session_seconds(state)
    session = Session(secrets.token_urlsafe(12), int(now * 1000), int(now) + seconds)
    row = SignedIn(session.id, user.name, user.role, via, session.issued_ms, session.expires_s * 1000)
    return _cookies(state, _value(state, user.role, user.name, session), seconds), row


def signed_out_cookies(state: GatewayState) -> list[tuple[str, str]]:
    """The Set-Cookie headers that clear the session cookies."""
    return _cookies(state, "", 0)


def cookie_value(request: Request, name: str) -> str | None:
    for part in (request.header("cookie") or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def session_user(request: Request, state: GatewayState) -> ConsoleUser | None:
    """The user a valid, unexpired, unrevoked session cookie names; None for no cookie, a bad signature, a
    cookie of an earlier format, expiry, or a session signed out or revoked."""
    value = cookie_value(request, COOKIE)
    if not value:
        return None
    payload, _, signature = value.rpartition(".")
    if not payload or not hmac.compare_digest(signature.encode(), _sign(state, payload).encode()):
        return None
    parts = payload.split(".")
    if len(parts) != 5:
        return None
    expires, role, name, issued, session_id = parts
    if not expires.isdigit() or int(expires) <= state.clock() or role not in ROLES or not issued.isdigit():
        return None
    try:
        decoded = base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    session = Session(session_id, int(issued), int(expires))
    if state.sessions.published.current.refuses(decoded, session):
        return None
    return ConsoleUser(decoded, role, session)


def signed_in(request: Request, state: GatewayState, actor: str = ADMIN_ROLE) -> ConsoleUser | None:
    """Who is signed in: the bearer admin token (role admin, named `actor`) or a session cookie."""
    if authorized(request, state):
        return ConsoleUser(actor, ADMIN_ROLE)
    return session_user(request, state)


def cookie_attributes(state: GatewayState, max_age: int, path: str = "/console/", same_site: str = "Strict") -> str:
    secure = "; Secure" if state.console_url.startswith("https:") else ""
    return f"Path={path}; HttpOnly; SameSite={same_site}; Max-Age={max_age}{secure}"
