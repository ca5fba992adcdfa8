"""A console page's declaration: method, path template, handler and the roles that may open it."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import ModuleType

from tollhouse.gateway.console_session import ROLES, ConsoleUser
from tollhouse.gateway.http import Request, Response
from tollhouse.gateway.state import GatewayState

PageHandler = Callable[[Request, GatewayState, ConsoleUser], Awaitable[Response]]

ALL_ROLES: frozenset[str] = frozenset(ROLES)
ADMIN: frozenset[str] = frozenset({"admin"})
POLICY: frozenset[str] = frozenset({"admin", "policy_owner"})  # who changes policy and decides exemptions
MONEY: frozenset[str] = frozenset({"admin", "finance", "policy_owner", "auditor"})
AUDIT: frozenset[str] = frozenset({"admin", "auditor"})

_PARAM = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True, slots=True)
class Page:
    method: str
    path: str  # a template: "/console/teams/{team}"; a parameter matches one path segment
    handler: PageHandler
    roles: frozenset[str] = ALL_ROLES
    title: str = ""  # the navigation's label; empty: not in the navigation
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = self.roles - ALL_ROLES
        if unknown:
            raise ValueError(f"page {self.path}: unknown roles {sorted(unknown)}; roles are {', '.join(ROLES)}")
        parts = _PARAM.split(self.path)  # literal, name, literal, name, ..., literal
        regex = "".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)" for i, part in enumerate(parts))
        object.__setattr__(self, "_pattern", re.compile(regex))

    def match(self, path: str) -> dict[str, str] | None:
        found = self._pattern.fullmatch(path)
        return None if found is None else found.groupdict()


def registry() -> ModuleType:
    from tollhouse.console import registry as module  # the page modules import this one

    return module
