"""The one router of the control plane and the console: typed routes, compiled once, and the OpenAPI document
generated from them.

A Route names its method, path template (a `{name}` matches one path segment), handler, who may call it
(`auth`, `roles`) and what the OpenAPI document says of it (`summary`, `doc`: parameters, request body and
responses). gateway/routes.py declares every route in one table; the console's pages (console/registry.py) are
routes too. Fixed paths are found by one dict lookup, templated ones by comparing segments with the templates of
the same length. Provider paths (`/{provider}/...`) never reach the router: the app sends them to the pipeline
after one prefix check.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tollhouse.gateway.http import Request, Response, Streamed
from tollhouse.gateway.state import GatewayState

Handler = Callable[[Request, GatewayState], Awaitable[Response | Streamed]]

_PARAM = re.compile(r"\{([a-z_]+)\}")
API = "/api/v1/"
OPENAPI_PATH = "/api/v1/openapi.json"


class Auth(StrEnum):
    """Who may call a route."""

    public = "public"  # anyone (health, metrics, the OpenAPI document, the requester's exemption pages, sign-in)
    agent = "agent"  # an agent's enrollment token or the admin token, checked by the handler itself
    user = "user"  # the admin token (role admin) or a console session whose role is listed (writes: + CSRF header)
    page = "page"  # a console page: a signed-in user whose role is listed; anonymous browsers go to the sign-in


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # a template: "/api/v1/keys/{prefix}"
    handler: Handler
    auth: Auth = Auth.user
    roles: frozenset[str] = frozenset({"admin"})  # for Auth.user and Auth.page: the roles that may call it
    summary: str = ""
    doc: Mapping[str, Any] = field(default_factory=dict)  # the OpenAPI operation: parameters, requestBody, ...
    segment: str = "[^/]+"  # what each {param} of the path matches (a regex)
    params: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError(f"route {self.method} {self.path}: a path starts with /")
        object.__setattr__(self, "params", tuple(_PARAM.findall(self.path)))

    @property
    def documented(self) -> bool:
        """In the OpenAPI document: every /api/v1 route but the document itself."""
        return self.path.startswith(API) and self.path != OPENAPI_PATH


@dataclass(frozen=True, slots=True)
class Found:
    route: Route
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class Missing:
    """No route: `allowed` lists the methods the path has (empty: no such path)."""

    allowed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Template:
    parts: tuple[str | re.Pattern[str], ...]  # a literal segment, or the pattern of a parameter
    names: tuple[str, ...]
    route: Route

    def match(self, segments: list[str]) -> dict[str, str] | None:
        values: list[str] = []
        for want, got in zip(self.parts, segments, strict=True):
            if isinstance(want, str):
                if want != got:
                    return None
            elif want.fullmatch(got) is None:
                return None
            else:
                values.append(got)
        return dict(zip(self.names, values, strict=True))


class Router:
    """The routes compiled for matching. Two routes with the same method and path are refused."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)
        self._fixed: dict[tuple[str, str], Route] = {}
        self._fixed_methods: dict[str, list[str]] = {}
        self._templates: dict[int, list[_Template]] = {}
        seen: set[tuple[str, str]] = set()
        for route in self.routes:
            key = (route.method, route.path)
            if key in seen:
                raise ValueError(f"route {route.method} {route.path} is declared twice")
            seen.add(key)
            if not route.params:
                self._fixed[key] = route
                self._fixed_methods.setdefault(route.path, []).append(route.method)
                continue
            pattern = re.compile(route.segment)
            parts = tuple(pattern if _PARAM.fullmatch(s) else s for s in route.path.split("/"))
            self._templates.setdefault(len(parts), []).append(_Template(parts, route.params, route))

    def match(self, method: str, path: str) -> Found | Missing:
        route = self._fixed.get((method, path))
        if route is not None:
            return Found(route, {})
        allowed = list(self._fixed_methods.get(path, ()))
        segments = path.split("/")
        for template in self._templates.get(len(segments), ()):
            params = template.match(segments)
            if params is None:
                continue
            if template.route.method == method:
                if not allowed:  # a fixed path of another method wins over a template (e.g. .../new)
                    return Found(template.route, params)
                continue
            allowed.append(template.route.method)
        return Missing(tuple(dict.fromkeys(allowed)))

    def listing(self) -> list[tuple[str, str]]:
        """(method, path template) of every route, sorted (for docs and tests)."""
        return sorted((r.method, r.path) for r in self.routes)


_SECURITY: dict[Auth, list[dict[str, list[str]]]] = {
    Auth.public: [],
    Auth.agent: [{"admin": []}, {"enrollment": []}],
    Auth.user: [{"admin": []}, {"session": []}],
    Auth.page: [{"session": []}],
}
_FORBIDDEN = {"description": "a console session whose role may not call this (error.roles lists the roles that may)",
              "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def openapi_document(frame: Mapping[str, Any], routes: Iterable[Route]) -> dict[str, Any]:
    """The OpenAPI document: `frame` (info, components) with the paths of the documented routes, each operation
    built from its route: summary, path parameters (from the template unless `doc` describes them), security
    (from `auth`), the roles that may call it (`x-roles`), and what `doc` adds."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not route.documented:
            continue
        operation: dict[str, Any] = {"summary": route.summary} if route.summary else {}
        operation.update(route.doc)
        given = {p.get("name") for p in operation.get("parameters", ()) if p.get("in") == "path"}
        generated = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                     for name in route.params if name not in given]
        if generated:
            operation["parameters"] = [*generated, *operation.get("parameters", ())]
        operation["security"] = _SECURITY[route.auth]
        if route.auth is Auth.user:
            operation["x-roles"] = sorted(route.roles)
            responses = dict(operation.get("responses", {}))
            responses.setdefault("401", {"description": "missing or wrong admin token, and no console session"})
            responses.setdefault("403", _FORBIDDEN)
            operation["responses"] = responses
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {**frame, "paths": dict(sorted(paths.items()))}

