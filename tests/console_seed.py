"""A gateway with known history for the console's tests: backdated calls written into its store (last month and
this month) and live calls sent through the gateway to the mock provider at a fixed clock, with budgets in force."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import Gateway, upstreams
from tollhouse.events.store import open_store
from usage_seed import event, ms

NOW = ms("2026-12-10T15:00:00+00:00") / 1000  # a Thursday; billing month: 1 December (UTC)
DIRECTORY = {
    "org": "acme",
    "teams": [{"id": "engineering", "cost_centre": "CC-1"}, {"id": "platform", "parent": "engineering"},
              {"id": "ml", "parent": "engineering"}, {"id": "sales", "cost_centre": "CC-9"}],
    "projects": [{"id": "checkout", "team": "platform"}, {"id": "forecast", "team": "ml"}],
    "people": [{"id": "alice", "team": "platform", "projects": ["checkout"]}, {"id": "bob", "team": "ml"},
               {"id": "carol", "team": "sales"}],
}
RULES = [
    {"id": "platform-budget", "scope": "team", "team": "platform",
     "condition": {"type": "budget", "threshold": 20, "window": "monthly"}, "action": {"type": "hard_stop"}},
    {"id": "ml-budget", "scope": "team", "team": "ml",
     "condition": {"type": "budget", "threshold": 1000, "window": "monthly"}, "action": {"type": "hard_stop"}},
    {"id": "no-gpt4o", "scope": "team", "team": "sales",
     "condition": {"type": "model", "operator": "in", "models": ["gpt-4o"]}, "action": {"type": "hard_stop"}},
]
D = 1_000_000_000  # nano-dollars per dollar


def backdated() -> list[Any]:
    """Last month (November) and this month before today; whole dollars so totals are easy to check."""
    out = []
    for day in range(1, 31):  # November: platform $1/day, ml $2/day
        out.append(event(f"2026-11-{day:02d}T10:00:00+00:00", cost_nusd=1 * D))
        out.append(event(f"2026-11-{day:02d}T11:00:00+00:00", subject="bob", team="ml", project="forecast",
                         provider="anthropic", model="claude-sonnet", cost_nusd=2 * D))
    for day in range(1, 10):  # December 1-9: platform $1.5/day (at risk: $20 cap), ml $1/day, sales $0.25
        out.append(event(f"2026-12-{day:02d}T09:00:00+00:00", cost_nusd=D + D // 2, model="gpt-4o"))
        out.append(event(f"2026-12-{day:02d}T13:00:00+00:00", subject="bob", team="ml", project="forecast",
                         provider="anthropic", model="claude-sonnet", cost_nusd=D))
        out.append(event(f"2026-12-{day:02d}T16:00:00+00:00", subject="carol", team="sales", project=None,
                         cost_centre="CC-9", cost_nusd=D // 4))
    out.append(event("2026-12-04T16:05:00+00:00", subject="carol", team="sales", project=None, cost_centre="CC-9",
                     model="gpt-4o", decision="block", rule_id="no-gpt4o", cost_nusd=0))
    return out


def post_chat(gw: Gateway, user: str, model: str = "gpt-4o-mini") -> int:
    body = json.dumps({"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(f"{gw.url}/openai/v1/chat/completions", data=body, method="POST",
                                 headers={"Content-Type": "application/json", "X-Tollhouse-User": user,
                                          "Authorization": "Bearer sk-test"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as err:
        err.read()
        return int(err.code)


@contextmanager
def seeded_gateway(mock_url: str, tmp_path: Path, store_url: str | None = None) -> Iterator[Gateway]:
    """The gateway (clock fixed at NOW, enforcement on) with the history above and four live calls today:
    alice and bob twice each (allowed) and carol once on gpt-4o (blocked by no-gpt4o). `store_url`: an empty
    store (default: SQLite in tmp_path)."""
    store_url = store_url or f"sqlite:///{tmp_path / 'store.db'}"
    store = open_store(store_url, tmp_path)
    store.insert_events(backdated())
    store.close()
    gw = Gateway({"store": {"url": store_url}, "directory": DIRECTORY, "enforcement": "on",
                  "identity": {"trust_user_header": True}, "providers": upstreams(mock_url),
                  "policy": {"rules": RULES}}, tmp_path / "gw", clock=lambda: NOW).start()
    try:
        for user in ("alice", "bob", "alice", "bob"):
            assert post_chat(gw, user) == 200
        assert post_chat(gw, "carol", "gpt-4o") == 403
        yield gw
    finally:
        gw.stop()
