"""A console page's declaration: method, path template, handler and the roles that may open it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tollhouse.gateway.console_session import ROLES, ConsoleUser
from tollhouse.gateway.http import Request, Response
from tollhouse.gateway.state import GatewayState

PageHandler = Callable[[Request, GatewayState, ConsoleUser], Awaitable[Response]]

ALL_ROLES: frozenset[str] = frozenset(ROLES)
ADMIN: frozenset[str] = frozenset({"admin"})
POLICY: frozenset[str] = frozenset({"admin", "policy_owner"})  # who changes policy and decides exemptions
MONEY: frozenset[str] = frozenset({"admin", "finance", "policy_owner", "auditor"})
AUDIT: frozenset[str] = frozenset({"admin", "auditor"})


@dataclass(frozen=True, slots=True)
class Page:
    method: str
    path: str  # a template: "/console/teams/{team}"; a parameter matches one path segment (gateway/router.py)
    handler: PageHandler
    roles: frozenset[str] = ALL_ROLES
    title: str = ""  # the navigation's label; empty: not in the navigation

    def __post_init__(self) -> None:
        unknown = self.roles - ALL_ROLES
        if unknown:
            raise ValueError(f"page {self.path}: unknown roles {sorted(unknown)}; roles are {', '.join(ROLES)}")
