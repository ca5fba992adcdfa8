"""Who is signed in to the console, and the gate every page under /console/ passes.

Every console page needs a signed-in user: a signed session cookie (set by /console/login, HttpOnly,
SameSite=Strict, 12 hours) naming the user and their role, or the admin token as a bearer token (role
admin). Only the requester's side of the exemption workflow is open without sign-in: the sign-in form
itself, the exemption request form, filing it, and one request's status page (its id is a random
capability handed to whoever filed it). Everything else under /console/, including pages added later and
paths that do not exist, answers an anonymous browser with 303 to /console/login?next=PATH and no data.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from tollhouse.gateway.admin import authorized
from tollhouse.gateway.http import Request, Response
from tollhouse.gateway.state import GatewayState

COOKIE = "tollhouse_console"
SESSION_S = 12 * 3600
LOGIN_PATH = "/console/login"
DEFAULT_NEXT = "/console/exemptions"
ROLES = ("admin", "policy_owner", "finance", "auditor")  # DESIGN.md, "Seeing and deciding"
ADMIN_ROLE = "admin"

_CONSOLE = "/console/"
# (method, path pattern) open without sign-in: the requester's side of the exemption workflow
_PUBLIC = (
    ("GET", re.compile(r"/console/login")),
    ("GET", re.compile(r"/console/static/[A-Za-z0-9_.-]{1,80}")),  # vendored scripts and the style sheet
    ("POST", re.compile(r"/console/login")),
    ("POST", re.compile(r"/console/logout")),
    ("GET", re.compile(r"/console/exemptions/new")),
    ("POST", re.compile(r"/console/exemptions")),
    ("GET", re.compile(r"/console/exemptions/(?!new$)[A-Za-z0-9_-]{1,64}")),
)


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    name: str
    role: str  # one of ROLES


def is_public(method: str, path: str) -> bool:
    """A console path anyone may open (the requester's pages and the sign-in)."""
    return any(m == method and pattern.fullmatch(path) for m, pattern in _PUBLIC)


def gate(request: Request, state: GatewayState) -> Response | None:
    """None when the request may go on; else the redirect to the sign-in (a console page, nobody signed in)."""
    path = request.path
    if not (path.startswith(_CONSOLE) or path == "/console") or is_public(request.method, path):
        return None
    if signed_in(request, state) is not None:
        return None
    target = path + (f"?{request.query_string}" if request.query_string else "")
    return sign_in_redirect(target)


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


def session_value(state: GatewayState, user: ConsoleUser) -> str:
    """The cookie's value: expiry, role and name (base64url), signed with the admin token."""
    if user.role not in ROLES:
        raise ValueError(f"unknown console role {user.role!r}; one of {', '.join(ROLES)}")
    name = base64.urlsafe_b64encode(user.name.encode()).decode().rstrip("=")
    payload = f"{int(state.clock()) + SESSION_S}.{user.role}.{name}"
    return f"{payload}.{_sign(state, payload)}"


def cookie_value(request: Request, name: str) -> str | None:
    for part in (request.header("cookie") or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def session_user(request: Request, state: GatewayState) -> ConsoleUser | None:
    """The user a valid, unexpired session cookie names; None for no cookie, a bad signature, or expiry."""
    value = cookie_value(request, COOKIE)
    if not value:
        return None
    payload, _, signature = value.rpartition(".")
    if not payload or not hmac.compare_digest(signature.encode(), _sign(state, payload).encode()):
        return None
    expires, _, rest = payload.partition(".")
    role, _, name = rest.partition(".")
    if not expires.isdigit() or int(expires) <= state.clock() or role not in ROLES:
        return None
    try:
        return ConsoleUser(base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode(), role)
    except (binascii.Error, UnicodeDecodeError):
        return None


def signed_in(request: Request, state: GatewayState, actor: str = ADMIN_ROLE) -> ConsoleUser | None:
    """Who is signed in: the bearer admin token (role admin, named `actor`) or a session cookie."""
    if authorized(request, state):
        return ConsoleUser(actor, ADMIN_ROLE)
    return session_user(request, state)


def cookie_attributes(state: GatewayState, max_age: int) -> str:
    secure = "; Secure" if state.console_url.startswith("https:") else ""
    return f"Path=/console/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
