"""After a restart the budget counters of everyone in the directory are loaded in the background, so nobody's
first call waits for a store read (the embedded ledger)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tollhouse.config import parse_settings
from tollhouse.events.model import CallEvent
from tollhouse.events.store import open_store
from tollhouse.gateway.app import warm_counters
from tollhouse.gateway.state import build_state
from tollhouse.ledger.local import Charge


def _spent(subject: str, ts_ms: int, cost_nusd: int) -> CallEvent:
    return CallEvent(f"ev-{subject}", ts_ms, subject, "employee", "platform", None, None, "openai", "chat",
                     "/v1/chat/completions", True, "gpt-4o-mini", "gpt-4o-mini", False, 200, 10, 10, 0, 0,
                     cost_nusd, "response", "allow", None, None, 1.0, 1.0, False, None)


def test_everyones_counters_are_loaded_before_their_first_call(tmp_path: Path) -> None:
    settings = parse_settings({
        "enforcement": "on",
        "providers": {"openai": {"upstream": "http://127.0.0.1:9"}},
        "directory": {"teams": [{"id": "platform"}],
                      "people": [{"id": "alice", "team": "platform"}, {"id": "bob", "team": "platform"}]},
        "policy": {"rules": [{"id": "b", "scope": "individual", "action": {"type": "hard_stop"},
                              "condition": {"type": "budget", "threshold": 1, "window": "monthly"}}]},
    }, "test")
    now_ms = int(time.time() * 1000)
    store = open_store(settings.store.url, tmp_path)
    store.insert_events([_spent("alice", now_ms - 1000, 400_000_000)])  # $0.40 spent before the restart
    store.close()

    async def run() -> None:
        state = await build_state(settings, tmp_path, "http://127.0.0.1:8787")
        try:
            subject = state.directory.current.subject("alice")
            caps = state.policy.current.subject_caps(subject)
            charge = Charge("openai", 1_000, 10, 10)
            hard = [cap.units if cap.hard else None for cap in caps]
            assert caps and state.ledger.try_reserve(caps, charge, now_ms, hard) is None  # would wait for the store
            await warm_counters(state)
            for who, spent in (("alice", 400_000_000), ("bob", 0)):
                caps = state.policy.current.subject_caps(state.directory.current.subject(who))
                hard = [cap.units if cap.hard else None for cap in caps]
                result = state.ledger.try_reserve(caps, charge, now_ms, hard)
                assert result is not None, f"{who}'s counter was not loaded"
                assert result.usage[0].used == spent
        finally:
            await state.close()

    asyncio.run(run())
