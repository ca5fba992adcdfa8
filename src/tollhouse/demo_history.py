"""The demo's past: two weeks of calls, backdated and written straight into the store before the gateway
starts, so the console shows a baseline, a month so far and a trend at once. Deterministic (seeded), priced
with the gateway's price book, idempotent (fixed ids: a second demo start adds nothing)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tollhouse.events.model import CallEvent
from tollhouse.events.store import open_store
from tollhouse.pricing import PriceBook

DAY_MS = 86_400_000
_PRICE_PROVIDER = {"openai": "openai", "anthropic": "anthropic", "gemini": "google"}
_PATHS = {"chat": "/v1/chat/completions", "embeddings": "/v1/embeddings", "responses": "/v1/responses",
          "messages": "/v1/messages", "generate": "/v1beta/models:generateContent"}


def _route(kind: str) -> tuple[str, str]:
    """(provider, endpoint) of a demo workload kind."""
    if kind.startswith("openai"):
        return "openai", {"openai": "chat", "openai-embeddings": "embeddings"}.get(kind, "responses")
    return (kind, "messages") if kind == "anthropic" else (kind, "generate")


def history(now_ms: int, subjects: Sequence[dict[str, Any]], workload: Sequence[tuple[str, str, int]],
            days: int = 14, seed: int = 11) -> list[CallEvent]:
    """Calls over the `days` days before `now_ms` (fewer at weekends, each subject at its own pace)."""
    rng = random.Random(seed)
    prices = PriceBook(())
    kinds = [w for w in workload for _ in range(w[2])]
    out: list[CallEvent] = []
    start = now_ms - days * DAY_MS
    for day in range(days):
        day_ms = start + day * DAY_MS
        weekend = (day_ms // DAY_MS + 3) % 7 >= 5  # 1970-01-01 was a Thursday
        for s_index, who in enumerate(subjects):
            project = who.get("project") or next(iter(who.get("projects", ())), None)
            pace = 2 + (s_index * 5) % 9
            for n in range(rng.randint(0, 2) if weekend else rng.randint(pace, pace * 2)):
                kind, model, _ = rng.choice(kinds)
                provider, endpoint = _route(kind)
                tokens_in = rng.randint(150, 4000)
                tokens_out = 0 if endpoint == "embeddings" else rng.randint(40, 1200)
                cost = prices.token_cost_nusd(_PRICE_PROVIDER[provider], model, tokens_in, tokens_out)
                out.append(CallEvent(
                    id=f"demo-history-{day}-{s_index}-{n}", ts_ms=day_ms + rng.randint(0, DAY_MS - 1),
                    subject=who["id"], subject_kind=who.get("kind", "employee"), team=who.get("team"),
                    project=project, cost_centre=None, provider=provider, endpoint=endpoint,
                    path=_PATHS[endpoint], metered=True, model=model, requested_model=model,
                    stream=rng.random() < 0.4, status=200, input_tokens=tokens_in, output_tokens=tokens_out,
                    cache_read_tokens=0, cache_write_tokens=0, cost_nusd=cost, usage_source="response",
                    decision="allow", rule_id=None, would=None, latency_ms=float(rng.randint(200, 4000)),
                    ttfb_ms=None, client_disconnected=False, error=None))
    return out


def seed_history(store_url: str, data_dir: Path, events: Sequence[CallEvent]) -> int:
    """Write the events into the store (those already there are skipped); how many were new."""
    store = open_store(store_url, data_dir)
    try:
        return store.insert_events(events)
    finally:
        store.close()
