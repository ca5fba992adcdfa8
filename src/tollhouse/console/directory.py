"""The directory (/console/directory): teams (as a tree), people, projects, services and cost centres of the
version in force, for every role; admins edit it as YAML, checked as they type (the directory itself, and every
rule of the policy in force against it), and publish it as a new version."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import yaml

from tollhouse.config import DirectoryConfig
from tollhouse.console.diffs import diff_view, two_versions
from tollhouse.console.forms import form_post, fragment, see_other
from tollhouse.console.pages import ADMIN, ALL_ROLES, Page
from tollhouse.console.render import render
from tollhouse.gateway.console_session import ConsoleUser
from tollhouse.gateway.directory_holder import KIND, DirectoryError
from tollhouse.gateway.http import Request, Response
from tollhouse.gateway.state import GatewayState

PATH = "/console/directory"


def as_text(cfg: DirectoryConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude_defaults=True), sort_keys=False, allow_unicode=True)


def _team_rows(cfg: DirectoryConfig) -> list[tuple[int, Any]]:
    """Teams depth first under their parents: (depth, team)."""
    children: dict[str | None, list[Any]] = defaultdict(list)
    for t in cfg.teams:
        children[t.parent].append(t)
    out: list[tuple[int, Any]] = []

    def walk(parent: str | None, depth: int) -> None:
        for t in children.get(parent, []):
            out.append((depth, t))
            walk(t.id, depth + 1)

    walk(None, 0)
    return out


def _cost_centres(cfg: DirectoryConfig) -> dict[str, list[str]]:
    """Each cost centre and who carries it ("team platform", "project checkout", ...)."""
    out: dict[str, list[str]] = defaultdict(list)
    for label, items in (("team", cfg.teams), ("project", cfg.projects), ("person", cfg.people),
                         ("service", cfg.services)):
        for item in items:
            if item.cost_centre:
                out[item.cost_centre].append(f"{label} {item.id}")
    return dict(sorted(out.items()))


def check(state: GatewayState, text: str) -> tuple[DirectoryConfig | None, list[str]]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return None, [f"{where}not valid YAML/JSON: {getattr(exc, 'problem', None) or exc}"]
    if isinstance(data, dict) and isinstance(data.get("directory"), dict):
        data = data["directory"]
    try:
        return state.directories.check(data), []
    except DirectoryError as exc:
        return None, list(exc.problems)


async def _page(request: Request, state: GatewayState, user: ConsoleUser, status: int = 200, text: str | None = None,
                problems: list[str] | None = None, note: str = "") -> Response:
    directory = state.directory.current
    cfg = directory.config
    doc = await state.docs.get(KIND, directory.version) if directory.version else None
    history = await state.docs.history(KIND, 20, None)
    return render(request, state, user, "directory.html", "Directory", status, cfg=cfg, doc=doc,
                  version=directory.version, teams=_team_rows(cfg), cost_centres=_cost_centres(cfg),
                  can_edit=user.role in ADMIN, text=text if text is not None else as_text(cfg),
                  problems=problems or [], note=note, history=history,
                  published=request.query.get("published", ""))


async def directory_page(request: Request, state: GatewayState, user: ConsoleUser) -> Response:
    return await _page(request, state, user)


async def validate(request: Request, state: GatewayState, user: ConsoleUser, form: dict[str, str]) -> Response:
    cfg, problems = check(state, form.get("directory", ""))
    counts = {"teams": len(cfg.teams), "people": len(cfg.people), "projects": len(cfg.projects),
              "services": len(cfg.services)} if cfg is not None else {}
    return fragment(state, "directory_check.html", problems=problems, counts=counts)


async def publish(request: Request, state: GatewayState, user: ConsoleUser, form: dict[str, str]) -> Response:
    text, note = form.get("directory", ""), form.get("note", "")
    cfg, problems = check(state, text)
    if cfg is None:
        return await _page(request, state, user, 400, text, problems, note)
    try:
        doc = await state.directories.publish(cfg.model_dump(mode="json"), user.name, note or None, "console")
    except DirectoryError as exc:
        return await _page(request, state, user, 400, text, list(exc.problems), note)
    return see_other(f"{PATH}?published={doc.version}")


async def diff_page(request: Request, state: GatewayState, user: ConsoleUser) -> Response:
    """What changed from directory version `from` to `to` (0: empty; `to` defaults to the one in force)."""
    found = await two_versions(request, state, user, KIND, "directory", state.directory.current.version)
    if isinstance(found, Response):
        return found
    a, b, docs = found
    bodies = [d.body if d else {} for d in docs]
    return render(request, state, user, "version_diff.html", f"Directory: version {a} → {b}", a=a, b=b,
                  docs=docs, diff=diff_view(bodies[0], bodies[1], items=False), what="directory",
                  back_href=f"{PATH}#history", back_label="Back to the directory", rollback=False)


PAGES = (
    Page("GET", PATH, directory_page, ALL_ROLES, "Directory"),
    Page("GET", f"{PATH}/diff", diff_page, ALL_ROLES),
    Page("POST", f"{PATH}/validate", form_post(validate), ADMIN),
    Page("POST", f"{PATH}/publish", form_post(publish), ADMIN),
)
