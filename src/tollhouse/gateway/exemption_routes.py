"""Routes of the exemption workflow: the JSON API under /api/v1/exemptions, the requester's console pages under
/console/exemptions (and the console sign-in); the queue and its decisions are console pages
(console/exemptions.py). `admin` True: the bearer admin token is required (checked by the app). A gateway whose
exemptions are another's (`exemptions.authority_url`: an agent's control plane) redirects every workflow path there."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import orjson

from tollhouse.gateway import exemption_api as api
from tollhouse.gateway import exemption_console as console
from tollhouse.gateway.admin import api_error
from tollhouse.gateway.http import Request, Response
from tollhouse.gateway.state import GatewayState

Handler = Callable[[Request, GatewayState], Awaitable[Response]]

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PREFIXES = ("/api/v1/exemptions", "/console/exemptions", "/console/login", "/console/logout")

# (method, path with {id}, handler, admin token required)
ROUTES: tuple[tuple[str, str, Handler, bool], ...] = (
    ("POST", "/api/v1/exemptions", api.create, False),
    ("GET", "/api/v1/exemptions", api.list_exemptions, True),
    ("GET", "/api/v1/exemptions/{id}", api.get_exemption, False),
    ("POST", "/api/v1/exemptions/{id}/approve", api.approve, True),
    ("POST", "/api/v1/exemptions/{id}/deny", api.deny, True),
    ("POST", "/api/v1/exemptions/{id}/revoke", api.revoke, True),
    ("GET", "/console/exemptions/new", console.new_request, False),
    ("POST", "/console/exemptions", console.file_request, False),
    ("GET", "/console/exemptions/{id}", console.status_page, False),
    ("GET", "/console/login", console.login_form, False),
    ("POST", "/console/login", console.login, False),
    ("POST", "/console/logout", console.logout, False),
)
QUEUE_PREFIXES = ("/api/v1/exemptions", "/console/exemptions")


def elsewhere(request: Request, state: GatewayState) -> Response | None:
    """None on the gateway that holds the queue; elsewhere (an agent, exemptions.authority_url set) a 307 to the
    same path there, so a request is filed, read and decided in the one queue policy owners see."""
    authority = state.settings.exemptions.authority_url
    if not authority:
        return None
    query = f"?{request.query_string}" if request.query_string else ""
    location = f"{authority}{request.raw_path or request.path}{query}"
    body = orjson.dumps({"error": {"message": f"exemptions are filed and decided at {authority}: this "
                                   f"gateway's queue is not used; go to {location}",
                                   "code": "exemptions_elsewhere", "location": location}})
    return Response(307, body, [("location", location), ("content-type", "application/json")])


def at_authority(handler: Handler) -> Handler:
    """The handler, on the gateway that holds the queue; elsewhere a 307 there (see `elsewhere`)."""

    async def routed(request: Request, state: GatewayState) -> Response:
        redirect = elsewhere(request, state)
        return redirect if redirect is not None else await handler(request, state)

    return routed


_SPLIT = tuple((method, tuple(path.split("/")), at_authority(handler) if path.startswith(QUEUE_PREFIXES)
                else handler, admin) for method, path, handler, admin in ROUTES)


def _params(pattern: tuple[str, ...], parts: list[str]) -> dict[str, str] | None:
    if len(pattern) != len(parts):
        return None
    params: dict[str, str] = {}
    for want, got in zip(pattern, parts, strict=True):
        if want == "{id}":
            if not _ID.fullmatch(got) or got == "new":
                return None
            params["id"] = got
        elif want != got:
            return None
    return params


def match(request: Request) -> tuple[Handler, bool] | Response | None:
    """The handler for a workflow path (and whether it needs the admin token), a 404/405 for other API paths
    under the workflow's prefixes, None for everything else (other console paths go to the console's pages)."""
    path = request.path
    if not path.startswith(_PREFIXES):
        return None
    parts = path.split("/")
    allowed: list[str] = []
    for method, pattern, handler, admin in _SPLIT:
        params = _params(pattern, parts)
        if params is None:
            continue
        if method == request.method:
            request.params.update(params)
            return handler, admin
        allowed.append(method)
    if path.startswith("/console/"):
        return None  # the policy owner's queue and decisions are console pages (console/exemptions.py)
    if allowed:
        return api_error(405, f"{request.method} is not allowed on {path} (allowed: {', '.join(allowed)})",
                         "method_not_allowed")
    return api_error(404, f"no such endpoint: {path}; see /api/v1/openapi.json", "not_found")
