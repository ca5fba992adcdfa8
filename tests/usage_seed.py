"""Events with chosen times and attributions, written straight into a store (for the usage views' tests)."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

from tollhouse.events.model import CallEvent

_ids = itertools.count()


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def event(ts: str, subject: str = "alice", team: str | None = "platform", project: str | None = "checkout",
          provider: str = "openai", model: str | None = "gpt-4o-mini", cost_nusd: int | None = 1_000_000,
          input_tokens: int = 100, output_tokens: int = 50, decision: str = "allow", **extra: Any) -> CallEvent:
    values: dict[str, Any] = dict(
        id=f"ev-{next(_ids)}", ts_ms=ms(ts), subject=subject, subject_kind="employee", team=team, project=project,
        cost_centre=extra.pop("cost_centre", "CC-200"), provider=provider, endpoint="chat", path="/v1/chat/completions",
        metered=True, model=model, requested_model=model, stream=False, status=extra.pop("status", 200),
        input_tokens=input_tokens, output_tokens=output_tokens, cache_read_tokens=0, cache_write_tokens=0,
        cost_nusd=cost_nusd, usage_source="response", decision=decision, rule_id=None, would=extra.pop("would", None),
        latency_ms=5.0, ttfb_ms=None, client_disconnected=False, error=None)
    values.update(extra)
    return CallEvent(**values)
