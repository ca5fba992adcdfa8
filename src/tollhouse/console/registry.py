"""Every console page, in one table (each page module declares its own PAGES)."""

from __future__ import annotations

from tollhouse.console import (
    agents,
    audit,
    directory,
    events,
    exemptions,
    hosts,
    keys,
    overview,
    policy,
    sessions,
    teams,
    usage,
)
from tollhouse.console.pages import Page

PAGES: tuple[Page, ...] = (
    *overview.PAGES,
    *events.PAGES,
    *usage.PAGES,
    *teams.PAGES,
    *policy.PAGES,
    *exemptions.PAGES,
    *audit.PAGES,
    *agents.PAGES,
    *hosts.PAGES,
    *keys.PAGES,
    *sessions.PAGES,
    *directory.PAGES,
)


def navigation(role: str) -> list[tuple[str, str]]:
    """(label, path) of the pages in the navigation a role may open, in table order."""
    return [(p.title, p.path) for p in PAGES if p.title and p.method == "GET" and role in p.roles
            and "{" not in p.path]
