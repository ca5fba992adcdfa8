"""POST /api/v1/policy/backtest: what proposed rules would have done to the stored calls of the last `days`,
beside the policy in force (tollhouse/backtest.py). The replay runs on a thread of its own with its own store
connection, so neither the event loop nor the event writer waits for it."""

from __future__ import annotations

import asyncio
from typing import Any

from tollhouse.backtest import MAX_DAYS, backtest_store, setting_of
from tollhouse.events.store import StoreError, open_store
from tollhouse.gateway.admin import ApiError
from tollhouse.gateway.http import Request, Response, json_response
from tollhouse.gateway.policy_api import json_body
from tollhouse.gateway.policy_holder import RulesFileError, compile_rules
from tollhouse.gateway.state import GatewayState
from tollhouse.policy.engine import CompiledPolicy

_USAGE = 'body must be {"rules": [...], "days": 14} (days: 1 to 366, default 14)'


def _days(data: dict[str, Any]) -> int:
    days = data.get("days", 14)
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_DAYS:
        raise ApiError(400, f"days must be a whole number of days from 1 to {MAX_DAYS}, got {days!r}", "bad_request")
    return days


async def backtest(request: Request, state: GatewayState) -> Response:
    data = await json_body(request)
    if isinstance(data, list):
        data = {"rules": data}
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise ApiError(400, _USAGE, "bad_request")
    return json_response(await replay(state, data["rules"], _days(data)))


async def replay(state: GatewayState, rules: list[Any], days: int) -> dict[str, Any]:
    """The backtest report of `rules` over the stored calls of the last `days` (ApiError 400 when the rules do not
    validate, 503 when the store cannot be read). Shared by the API and the console's policy page."""
    settings = state.settings
    directory = state.directory.current
    try:
        proposed = compile_rules(rules, settings.policy.timezone, state.policies.directory, 0, "rules")
    except RulesFileError as exc:
        raise ApiError(400, f"the rules do not validate: {len(exc.problems)} problem(s); fix each and send them "
                       "again (nothing was replayed)", "invalid_rules", exc.problems) from None
    current = state.policy.current
    in_force = CompiledPolicy(current.rules, current.version)  # its own caches: it is judged on another thread
    setting = setting_of(settings, directory, state.prices)
    await state.writer.flush(2.0)  # calls recorded a moment ago are replayed too (never hangs on failing storage)
    now_ms = int(state.clock() * 1000)

    def run() -> dict[str, Any]:
        store = open_store(settings.store.url, state.data_dir)
        try:
            return backtest_store(store, proposed, in_force, setting, days, now_ms)
        finally:
            store.close()

    try:
        return await asyncio.to_thread(run)
    except StoreError as exc:
        raise ApiError(503, f"the stored calls cannot be read right now: {exc}. Retry shortly.",
                       "event_store_unavailable") from None
