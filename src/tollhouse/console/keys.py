"""Gateway keys (/console/keys, admin only): every key by its prefix (the secret is shown once, on the page that
creates it, and never again), create one for a person or service of the directory, revoke one."""

from __future__ import annotations

from tollhouse.console.forms import form_post, see_other
from tollhouse.console.pages import ADMIN, Page
from tollhouse.console.render import render
from tollhouse.gateway.console_session import ConsoleUser
from tollhouse.gateway.http import Request, Response
from tollhouse.gateway.state import GatewayState
from tollhouse.keys import create_key
from tollhouse.subject_ids import valid_subject_id

PATH = "/console/keys"
MAX_LABEL = 200
SMALL_FORM = 64 * 1024


async def _page(request: Request, state: GatewayState, user: ConsoleUser, status: int = 200,
                created: dict[str, str] | None = None, problems: list[str] | None = None,
                form: dict[str, str] | None = None) -> Response:
    records = await state.runner.run(lambda s: s.list_keys())
    directory = state.directory.current
    owners = sorted([p.id for p in directory.config.people] + [s.id for s in directory.config.services])
    return render(request, state, user, "keys.html", "Gateway keys", status, keys=records, owners=owners,
                  created=created, problems=problems or [], form=form or {},
                  revoked=request.query.get("revoked", ""))


async def keys_page(request: Request, state: GatewayState, user: ConsoleUser) -> Response:
    return await _page(request, state, user)


async def create(request: Request, state: GatewayState, user: ConsoleUser, form: dict[str, str]) -> Response:
    owner, label = form.get("user", "").strip(), form.get("label", "").strip()[:MAX_LABEL] or None
    problems = []
    if not owner:
        problems.append("user: required: the person or service the key is for")
    elif (problem := valid_subject_id(owner)) is not None:
        problems.append(f"user: {problem}")
    elif not state.directory.current.knows(owner) and form.get("allow_unknown") != "yes":
        problems.append(f"user: {owner!r} is not a person or service of the directory (version "
                        f"{state.directory.current.version}); add them on the directory page, or tick "
                        "'not in the directory' to create the key anyway")
    if problems:
        return await _page(request, state, user, 400, problems=problems, form=form)
    assert owner
    key, record = await state.runner.run(lambda s: create_key(s, owner, label))
    state.audit.record("key.created", user.name, {"prefix": record.prefix, "subject": owner, "label": label})
    return await _page(request, state, user, 201, created={"key": key, "prefix": record.prefix, "user": owner})


async def revoke(request: Request, state: GatewayState, user: ConsoleUser, form: dict[str, str]) -> Response:
    prefix = request.params["prefix"]
    count = await state.runner.run(lambda s: s.revoke_key(prefix))
    if not count:
        return await _page(request, state, user, 404, problems=[f"no active gateway key has the prefix {prefix!r}"])
    state.keys.forget()
    state.audit.record("key.revoked", user.name, {"prefix": prefix})
    return see_other(f"{PATH}?revoked={prefix}")


PAGES = (
    Page("GET", PATH, keys_page, ADMIN, "Keys"),
    Page("POST", PATH, form_post(create, SMALL_FORM), ADMIN),
    Page("POST", f"{PATH}/{{prefix}}/revoke", form_post(revoke, SMALL_FORM), ADMIN),
)
