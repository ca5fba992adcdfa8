"""Stage: identify. Who the call is for (person, service or unknown), the project it names, and the key the
upstream gets. Problems found here become part of the call's facts; `decide()` judges them."""

from __future__ import annotations

from typing import NamedTuple

from tollhouse.directory import Directory, Subject
from tollhouse.gateway.redact import Redactor
from tollhouse.gateway.state import GatewayState, ProviderRoute
from tollhouse.keys import KEY_PREFIX, sha256_hex
from tollhouse.policy.decide import Problem
from tollhouse.subject_ids import ALLOWED, MAX_SUBJECT_ID, valid_subject_id

USER_HEADER = "x-tollhouse-user"
PROJECT_HEADER = "x-tollhouse-project"


class Identity(NamedTuple):
    subject: Subject
    upstream_key: str | None  # replaces the client's key (gateway keys); None: forward the caller's own
    problem: Problem | None = None  # what the stage found wrong (judged by decide)
    redactor: Redactor | None = None  # removes the injected key from what the upstream answers


def _bad_header(name: str, value: str) -> Problem | None:
    """A provider-shaped 400 naming the header and the rule when `value` is not a valid id."""
    wrong = valid_subject_id(value)
    if wrong is None:
        return None
    return Problem("invalid_identity_header", 400,
                   f"Tollhouse refused the {name} header: {wrong}. It must name a person, service or project of "
                   f"the Tollhouse directory: at most {MAX_SUBJECT_ID} characters of {ALLOWED} (no spaces or "
                   "control characters).", always=True)


async def identify(user_header: str | None, project_header: str | None, state: GatewayState, route: ProviderRoute,
                   key: str | None, directory: Directory) -> Identity:
    """`user_header`, `project_header`: the caller's X-Tollhouse-User and X-Tollhouse-Project; `key`: the API key the
    caller sent, wherever its family carries it; `directory`: the version the call took when it started (the
    whole call is resolved in it, whatever is published meanwhile)."""
    project = project_header or None
    # Names the directory holds are known good; anything else must at least look like a name.
    if project is not None and not directory.has_project(project) \
            and (bad := _bad_header("X-Tollhouse-Project", project)) is not None:
        return Identity(directory.subject("anonymous"), None, bad)
    if key is not None and key.startswith(KEY_PREFIX):
        subject_id = await state.keys.subject_for(key)
        if subject_id is None:
            return Identity(directory.subject("anonymous", project), None, Problem(
                "invalid_gateway_key", 401, "This Tollhouse gateway key is unknown or revoked. Ask your "
                "administrator for a new one (tollhouse keys create --user NAME).", always=True))
        subject = directory.subject(subject_id, project)
        if route.api_key is None:
            return Identity(subject, None, Problem(
                "provider_key_missing", 502, f"Tollhouse has no real API key for provider '{route.id}' to use "
                f"with gateway keys. Set providers.{route.id}.api_key or its api_key_env variable on the "
                "gateway.", always=True))
        return _known(state, directory, Identity(subject, route.api_key, redactor=route.redactor))
    user = user_header if state.settings.identity.trust_user_header else None
    if user:
        if not directory.knows(user) and (bad := _bad_header("X-Tollhouse-User", user)) is not None:
            return Identity(directory.subject("anonymous", project), None, bad)
        return _known(state, directory, Identity(directory.subject(user, project), None))
    default_user = state.settings.identity.default_user  # the agent: the machine's configured user
    if default_user:
        return _known(state, directory, Identity(directory.subject(default_user, project), None))
    if key is None:
        return _known(state, directory, Identity(directory.subject("anonymous", project), None))
    digest = sha256_hex(key)
    person = directory.people_by_key_hash.get(digest)
    return _known(state, directory, Identity(directory.subject(person or f"key:{digest[:12]}", project), None))


def _known(state: GatewayState, directory: Directory, ident: Identity) -> Identity:
    """Unknown callers and made-up projects are problems (refused while enforcing, see decide)."""
    subject = ident.subject
    if subject.kind == "unknown" and _unknown_callers_refused(state, directory):
        return ident._replace(problem=Problem(
            "unknown_caller", 401,
            f"Tollhouse does not know who is calling ({subject.id}): the caller is no person or service of the "
            "organisation's directory. Use a gateway key (ask your administrator: tollhouse keys create --user "
            "NAME), have your provider key registered for you in the directory (provider_key_sha256), or, if "
            "you are in the directory under another name, ask your administrator to correct it."))
    project = subject.project
    if project is not None and not directory.has_project(project):
        # A made-up name must not open a fresh budget counter.
        known = ", ".join(directory.project_ids()[:20]) or "none are configured"
        return ident._replace(problem=Problem(
            "unknown_project", 400, f"X-Tollhouse-Project names {project!r}, which is not a project in the "
            f"Tollhouse directory (known: {known}). Use one of them, or leave the header out to use your default "
            "project."))
    return ident


def _unknown_callers_refused(state: GatewayState, directory: Directory) -> bool:
    """identity.unknown_callers: block / allow; unset: block once the directory names anyone (with an empty
    directory every caller is unknown, and only an explicit `block` refuses them all)."""
    setting = state.settings.identity.unknown_callers
    if setting is not None:
        return setting == "block"
    return directory.names_anyone
