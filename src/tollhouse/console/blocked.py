"""Blocked and would-be-blocked calls over a range: counts by rule and the most recent ones, read from the
events (the rollups count them but do not keep the rule) through the partial index events_stopped (schema
migration 12), which holds only those calls: the month's other events are not read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tollhouse.events.schema import STOPPED
from tollhouse.events.store import Store
from tollhouse.gateway.state import GatewayState
from tollhouse.gateway.storage import read_store

_WHERE = f"ts_ms >= ? AND ts_ms < ? AND {STOPPED}"


@dataclass(frozen=True)
class Blocked:
    by_rule: list[dict[str, Any]]  # {rule_id, blocked, would_block}, most first
    recent: list[dict[str, Any]]  # event rows, newest first


def _read(store: Store, since_ms: int, until_ms: int, limit: int) -> Blocked:
    by_rule = store.db.query(
        "SELECT rule_id, SUM(CASE WHEN decision = 'block' THEN 1 ELSE 0 END) AS blocked, "
        "SUM(CASE WHEN would = 'block' THEN 1 ELSE 0 END) AS would_block "
        f"FROM events WHERE {_WHERE} GROUP BY rule_id", [since_ms, until_ms])
    for row in by_rule:
        row["blocked"], row["would_block"] = int(row["blocked"]), int(row["would_block"])
    by_rule.sort(key=lambda r: (-(r["blocked"] + r["would_block"]), str(r["rule_id"])))
    recent = store.db.query(
        "SELECT id, ts_ms, subject, team, provider, model, decision, would, rule_id, status FROM events "
        f"WHERE {_WHERE} ORDER BY ts_ms DESC, seq DESC LIMIT ?", [since_ms, until_ms, limit])
    return Blocked(by_rule, recent)


async def blocked(state: GatewayState, since_ms: int, until_ms: int, limit: int = 15) -> Blocked:
    found: Blocked
    found, _ = await read_store(state.writer, state.runner.run, lambda s: _read(s, since_ms, until_ms, limit))
    return found
