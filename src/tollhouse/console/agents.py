"""Agents (/console/agents, admin and auditor): each enrolled agent's version, host and user, when it last
checked in (stale after STALE_S), the policy version it holds against the one in force, its enforcement; and the
enrollment tokens agents use, which an admin creates (shown once) and revokes."""

from __future__ import annotations

from typing import Any

from tollhouse.console.forms import form_post, see_other
from tollhouse.console.pages import ADMIN, AUDIT, Page
from tollhouse.console.render import render
from tollhouse.events.records import AgentRecord
from tollhouse.gateway.agent_api import issue_token
from tollhouse.gateway.console_session import ConsoleUser
from tollhouse.gateway.http import Request, Response
from tollhouse.gateway.state import GatewayState

PATH = "/console/agents"
STALE_S = 10 * 60  # agents long-poll for at most a minute: ten minutes of silence means it is not running
MAX_LABEL = 200
SMALL_FORM = 64 * 1024


def _row(a: AgentRecord, now_ms: int, current: int) -> dict[str, Any]:
    held = a.status.get("policy_version")
    return {"a": a, "stale": now_ms - a.last_seen_ms > STALE_S * 1000,
            "policy": held, "behind": isinstance(held, int) and held < current,
            "user": a.status.get("user"), "enforcement": a.status.get("enforcement"),
            "notice": a.status.get("last_notice")}


async def _page(request: Request, state: GatewayState, user: ConsoleUser, status: int = 200,
                created: dict[str, Any] | None = None, problems: list[str] | None = None) -> Response:
    agents = await state.runner.run(lambda s: s.list_agents())
    tokens = await state.runner.run(lambda s: s.list_enrollment_tokens())
    now_ms = int(state.clock() * 1000)
    current = state.policy.current.version
    return render(request, state, user, "agents.html", "Agents", status,
                  agents=[_row(a, now_ms, current) for a in agents], tokens=tokens, current=current,
                  stale_minutes=STALE_S // 60, can_admin=user.role in ADMIN, created=created,
                  problems=problems or [], revoked=request.query.get("revoked", ""))


async def agents_page(request: Request, state: GatewayState, user: ConsoleUser) -> Response:
    return await _page(request, state, user)


async def create_token(request: Request, state: GatewayState, user: ConsoleUser, form: dict[str, str]) -> Response:
    token, record = await issue_token(state, form.get("label", "").strip()[:MAX_LABEL] or None, user.name)
    return await _page(request, state, user, 201, created={"token": token, "prefix": record.prefix})


async def revoke_token(request: Request, state: GatewayState, user: ConsoleUser, form: dict[str, str]) -> Response:
    prefix = request.params["prefix"]
    count = await state.runner.run(lambda s: s.revoke_enrollment_token(prefix))
    if not count:
        return await _page(request, state, user, 404, problems=[f"no active enrollment token has the prefix "
                                                                f"{prefix!r}"])
    state.enrollment.forget()
    state.audit.record("agent.token_revoked", user.name, {"prefix": prefix})
    return see_other(f"{PATH}?revoked={prefix}")


PAGES = (
    Page("GET", PATH, agents_page, AUDIT, "Agents"),
    Page("POST", f"{PATH}/tokens", form_post(create_token, SMALL_FORM), ADMIN),
    Page("POST", f"{PATH}/tokens/{{prefix}}/revoke", form_post(revoke_token, SMALL_FORM), ADMIN),
)
