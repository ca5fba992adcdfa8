"""The policy page (/console/policy, the link in every block error): the rules in force in plain words, with the
version and who published it; for policy owners an editor that validates as you type, a review step that shows
the diff beside a backtest before publishing, and rollback; for everyone the history with diffs between any two
versions. Publishing and rolling back go through the same PolicyHolder.publish the API uses."""

from __future__ import annotations

import asyncio
from typing import Any

from tollhouse.backtest import MAX_DAYS
from tollhouse.console.diffs import diff_view, two_versions, version_number
from tollhouse.console.forms import form_post, fragment, see_other
from tollhouse.console.pages import ALL_ROLES, POLICY, Page
from tollhouse.console.policy_text import Checked, as_text, check
from tollhouse.console.render import error_page, render
from tollhouse.events.records import DocumentVersion
from tollhouse.gateway.admin import ApiError
from tollhouse.gateway.backtest_api import replay
from tollhouse.gateway.console_session import ConsoleUser
from tollhouse.gateway.http import Request, Response
from tollhouse.gateway.policy_api import POLICY as KIND
from tollhouse.gateway.policy_holder import FileAuthoritative, RulesFileError, VersionConflict
from tollhouse.gateway.state import GatewayState
from tollhouse.policy.describe import describe_rule

PATH = "/console/policy"
BACKTEST_DAYS = 14
BACKTEST_WAIT_S = 60.0  # then the page says so and points at the command line
HISTORY = 50


def _can_edit(user: ConsoleUser) -> bool:
    return user.role in POLICY


def _diff(before: list[Any], after: list[Any]) -> dict[str, Any]:
    return diff_view({"rules": before}, {"rules": after})


async def _doc(state: GatewayState, version: int) -> DocumentVersion | None:
    return await state.docs.get(KIND, version) if version else None


def _file_note(state: GatewayState) -> str | None:
    source = state.policies.authoritative
    if source.startswith("file:"):
        return (f"This gateway's policy is the rules file {source[5:]}: edit that file (it is reloaded when it "
                "changes); publishing and rolling back here are turned off.")
    return None


async def _page(request: Request, state: GatewayState, user: ConsoleUser, text: str | None = None,
                problems: list[str] | None = None, note: str = "", status: int = 200) -> Response:
    policy = state.policy.current
    current = await _doc(state, policy.version)
    history = await state.docs.history(KIND, HISTORY, None)
    query = request.query
    return render(request, state, user, "policy.html", "Policy", status,
                  version=policy.version, doc=current, sentences=[(r.id, describe_rule(r)) for r in policy.rules],
                  can_edit=_can_edit(user), file_note=_file_note(state),
                  text=text if text is not None else as_text(state.policies.raw), problems=problems or [],
                  note=note, history=history, published=query.get("published", ""),
                  rolled_back=query.get("rolled_back", ""), max_days=MAX_DAYS, days=BACKTEST_DAYS)


async def policy_page(request: Request, state: GatewayState, user: ConsoleUser) -> Response:
    return await _page(request, state, user)


def _checked(state: GatewayState, text: str) -> Checked:
    return check(text, state.settings.policy.timezone, state.policies.directory)


async def validate(request: Request, state: GatewayState, user: ConsoleUser, form: dict[str, str]) -> Response:
    """The editor's live check (htmx, as you type): the problems `tollhouse policy check` prints, with lines."""
    checked = _checked(state, form.get("rules", ""))
    rules = checked.policy.rules if checked.policy is not None else ()
    return fragment(state, "policy_check.html", problems=checked.problems, count=len(rules),
                    enabled=sum(1 for r in rules if r.enabled))


async def review(request: Request, state: GatewayState, user: ConsoleUser, form: dict[str, str]) -> Response:
    """Before publishing: the diff against the policy in force beside the backtest (which the page loads)."""
    text, note = form.get("rules", ""), form.get("note", "")
    checked = _checked(state, text)
    if checked.rules is None or checked.problems:
        return await _page(request, state, user, text, checked.problems, note, 400)
    policy = state.policy.current
    return render(request, state, user, "policy_review.html", "Review the new policy",
                  text=text, note=note, base_version=policy.version, next_version=policy.version + 1,
                  diff=_diff(state.policies.raw, checked.rules), days=BACKTEST_DAYS, max_days=MAX_DAYS,
                  sentences=[(r.id, describe_rule(r)) for r in checked.policy.rules] if checked.policy else [],
                  file_note=_file_note(state))


def _days(raw: str) -> int | None:
    return int(raw) if raw.isdigit() and 1 <= int(raw) <= MAX_DAYS else None


async def backtest(request: Request, state: GatewayState, user: ConsoleUser, form: dict[str, str]) -> Response:
    """The proposed rules replayed over the stored calls of the last `days` (htmx: the review page shows
    "running" until this answers); bounded by BACKTEST_WAIT_S."""
    days = _days(form.get("days", str(BACKTEST_DAYS)))
    if days is None:
        return fragment(state, "policy_backtest.html", report=None, days=BACKTEST_DAYS,
                        problem=f"days must be a whole number from 1 to {MAX_DAYS}")
    checked = _checked(state, form.get("rules", ""))
    if checked.rules is None or checked.problems:
        return fragment(state, "policy_backtest.html", report=None, days=days,
                        problem="the rules do not validate; fix them first: " + "; ".join(checked.problems))
    task = asyncio.ensure_future(replay(state, checked.rules, days))
    try:
        report = await asyncio.wait_for(asyncio.shield(task), BACKTEST_WAIT_S)
    except TimeoutError:
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # finished later: nobody waits
        return fragment(state, "policy_backtest.html", report=None, days=days,
                        problem=f"the backtest over {days} days took longer than {BACKTEST_WAIT_S:.0f} s; try fewer "
                        "days, or run `tollhouse policy backtest RULES_FILE --days N` on the command line")
    except ApiError as exc:
        return fragment(state, "policy_backtest.html", report=None, days=days, problem=str(exc))
    return fragment(state, "policy_backtest.html", report=report, days=days, problem="")


def _refused(request: Request, state: GatewayState, user: ConsoleUser, exc: Exception) -> Response:
    if isinstance(exc, RulesFileError):
        return error_page(request, state, user, 400, "Not published: " + "; ".join(exc.problems))
    if isinstance(exc, VersionConflict):
        return error_page(request, state, user, 409, "Not published: someone published another version while you "
                          f"were editing ({exc}). Open the policy page again and redo your edit on it.")
    return error_page(request, state, user, 409, f"Not published: {exc}")


async def publish(request: Request, state: GatewayState, user: ConsoleUser, form: dict[str, str]) -> Response:
    checked = _checked(state, form.get("rules", ""))
    if checked.rules is None or checked.problems:
        return await _page(request, state, user, form.get("rules", ""), checked.problems, form.get("note", ""), 400)
    base = form.get("base_version", "")
    try:
        doc = await state.policies.publish(checked.rules, user.name, "console", form.get("note") or None,
                                           int(base) if base.isdigit() else None)
    except (RulesFileError, VersionConflict, FileAuthoritative) as exc:
        return _refused(request, state, user, exc)
    return see_other(f"{PATH}?published={doc.version}#history")


async def diff_page(request: Request, state: GatewayState, user: ConsoleUser) -> Response:
    """What changed from version `from` to `to` (0: the empty policy; `to` defaults to the current one)."""
    found = await two_versions(request, state, user, KIND, "policy", state.policy.current.version)
    if isinstance(found, Response):
        return found
    a, b, docs = found
    bodies = [list(d.body.get("rules", [])) if d else [] for d in docs]
    return render(request, state, user, "version_diff.html", f"Policy: version {a} → {b}", a=a, b=b,
                  docs=docs, diff=_diff(bodies[0], bodies[1]), what="policy", back_href=f"{PATH}#history",
                  back_label="Back to the history", rollback=_can_edit(user))


async def rollback_confirm(request: Request, state: GatewayState, user: ConsoleUser) -> Response:
    version = version_number(request.params["version"])
    doc = await _doc(state, version) if version else None
    if doc is None or version is None:
        return error_page(request, state, user, 404, f"There is no policy version {request.params['version']}.")
    return render(request, state, user, "policy_rollback.html", f"Roll back to version {version}", doc=doc,
                  current=state.policy.current.version, file_note=_file_note(state),
                  diff=_diff(state.policies.raw, list(doc.body.get("rules", []))))


async def rollback(request: Request, state: GatewayState, user: ConsoleUser, form: dict[str, str]) -> Response:
    """Make an earlier version current again, as a new version (history is never rewritten)."""
    version = version_number(form.get("version"))
    doc = await _doc(state, version) if version else None
    if doc is None or version is None:
        return error_page(request, state, user, 404, f"There is no policy version {form.get('version', '')!r}.")
    if form.get("confirm") != "yes":
        return error_page(request, state, user, 400, "Not rolled back: tick the confirmation box first.")
    base = form.get("base_version", "")
    try:
        new = await state.policies.publish(list(doc.body.get("rules", [])), user.name, f"rollback:{version}",
                                           form.get("note") or f"rollback to version {version}",
                                           int(base) if base.isdigit() else None)
    except (RulesFileError, VersionConflict, FileAuthoritative) as exc:
        return _refused(request, state, user, exc)
    return see_other(f"{PATH}?rolled_back={new.version}#history")


PAGES = (
    Page("GET", PATH, policy_page, ALL_ROLES, "Policy"),
    Page("GET", f"{PATH}/diff", diff_page, ALL_ROLES),
    Page("POST", f"{PATH}/validate", form_post(validate), POLICY),
    Page("POST", f"{PATH}/review", form_post(review), POLICY),
    Page("POST", f"{PATH}/backtest", form_post(backtest), POLICY),
    Page("POST", f"{PATH}/publish", form_post(publish), POLICY),
    Page("GET", f"{PATH}/rollback/{{version}}", rollback_confirm, POLICY),
    Page("POST", f"{PATH}/rollback", form_post(rollback), POLICY),
)
