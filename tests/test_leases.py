"""Budget leases on their own: the control plane's lease book over the embedded ledger, driven by random
fleets (Hypothesis). Agents ask, spend what they were granted, ship their calls late, give leases back, are
killed; the gateway spends on the same cap meanwhile. Whatever the order, the fleet never spends past the cap,
the control plane never counts less than was spent, and once everything is shipped and given back its count
is exactly what was spent, apart from what a killed agent's lease still holds (never more than that lease)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from tollhouse.control.leases import LeaseBook, LeaseItem, LeaseSizing
from tollhouse.events.model import CallEvent
from tollhouse.events.store import LeaseRow, open_store
from tollhouse.ledger.local import HistoryRow, LocalLedger
from tollhouse.ledger.stored import StoredUsage
from tollhouse.ledger.types import Charge
from tollhouse.ledger.windows import month_id
from tollhouse.policy.engine import Cap, CompiledPolicy
from tollhouse.policy.rules import parse_rules

UTC = ZoneInfo("UTC")
T0 = 1_800_000_000_000
LIMIT = 100_000  # n$
POLICY = CompiledPolicy(parse_rules([{"id": "ml-cap", "scope": "team", "team": "ml", "action": {"type": "hard_stop"},
                                      "condition": {"type": "budget", "threshold": LIMIT / 1e9}}]), 1)
ITEM = LeaseItem("ml-cap", "team", "ml", 0)
SCOPES = (("subject", "x"), ("org", "*"), ("team", "ml"))


@dataclass
class SimAgent:
    name: str
    epoch: int = 0
    granted: int = 0  # this epoch's cumulative grant
    consumed: int = 0  # this epoch's spend
    unshipped: list[int] = field(default_factory=list)


@dataclass
class Fleet:
    book: LeaseBook
    ledger: LocalLedger
    cap: Cap
    stored: list[int] = field(default_factory=list)  # what the store holds (shipped and the gateway's calls)
    spent: int = 0  # what the providers served, everyone
    stranded_bound: int = 0  # what killed agents' leases may keep holding

    async def ask(self, agent: SimAgent, need: int, release: bool = False) -> None:
        item = LeaseItem(ITEM.rule, ITEM.scope, ITEM.ident, agent.consumed, need, release)
        grant = (await self.book.grant(agent.name, f"{agent.name}.{agent.epoch}", [item], POLICY, T0))[0]
        assert grant.error is None
        assert grant.granted >= agent.consumed  # never less than what was spent
        agent.granted = agent.consumed if release else grant.granted

    def spend(self, agent: SimAgent, amount: int) -> None:
        amount = min(amount, agent.granted - agent.consumed)  # an agent spends within its lease only
        if amount > 0:
            agent.consumed += amount
            agent.unshipped.append(amount)
            self.spent += amount

    async def ship(self, agent: SimAgent) -> None:
        usage = [StoredUsage(T0, SCOPES, Charge("openai", amount, 0, 0, 0)) for amount in agent.unshipped]
        self.stored += agent.unshipped
        agent.unshipped = []
        self.ledger.count_stored(usage, POLICY.count_windows)
        await self.book.drawn(agent.name, usage, T0)

    async def gateway_call(self, amount: int) -> None:
        result = await self.ledger.reserve([self.cap], Charge("openai", amount, 0, 0, 0), T0, [LIMIT])
        if result.reservation is not None:
            self.stored.append(amount)  # recorded, then settled
            self.spent += amount
            self.ledger.settle(result.reservation, Charge("openai", amount, 0, 0, 0))

    def kill(self, agent: SimAgent) -> None:
        self.stranded_bound += agent.granted - agent.consumed  # the dead process's unspent lease
        agent.epoch += 1
        agent.granted = agent.consumed = 0  # its spool survives: `unshipped` ships later

    async def used(self) -> int:
        return await self.ledger.cap_used(self.cap, T0)


def _fleet() -> Fleet:
    stored: list[int] = []

    async def loader(scope: str, ident: str, since_ms: int, bucket_ms: int) -> list[HistoryRow]:
        return [(T0, "openai", amount, 0, 0, 1) for amount in stored]

    ledger = LocalLedger(loader, 1, UTC, 900)
    book = LeaseBook(ledger, LeaseSizing(ttl_s=60, usd=Decimal("0.00001")), 1, UTC)  # 10,000 n$ leases
    cap = book.cap_for(POLICY, ITEM)
    return Fleet(book, ledger, cap, stored)


OPS = st.lists(st.tuples(st.sampled_from(["ask", "spend", "ship", "release", "kill", "gateway"]),
                         st.integers(0, 2), st.integers(1, 15_000)), max_size=60)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_a_fleet_never_spends_past_the_cap_and_the_count_never_drifts(ops: list[tuple[str, int, int]]) -> None:
    async def run() -> None:
        fleet = _fleet()
        agents = [SimAgent(f"agent-{n}") for n in range(3)]
        for op, who, amount in ops:
            agent = agents[who]
            if op == "ask":
                await fleet.ask(agent, amount)
            elif op == "spend":
                fleet.spend(agent, amount)
            elif op == "ship":
                await fleet.ship(agent)
            elif op == "release":
                await fleet.ask(agent, 0, release=True)
            elif op == "kill":
                fleet.kill(agent)
            else:
                await fleet.gateway_call(amount)
            assert fleet.spent <= LIMIT  # nobody spends past the cap
            assert await fleet.used() >= fleet.spent  # the control plane never counts less than was spent
        for agent in agents:
            await fleet.ship(agent)
            await fleet.ask(agent, 0, release=True)
        used = await fleet.used()
        assert sum(fleet.stored) == fleet.spent  # every call reached the store once
        assert fleet.spent <= used <= fleet.spent + fleet.stranded_bound
        # once a killed agent's carry has had its time, nothing stays stranded: the count is exact
        await fleet.book.sweep(T0 + 3_600_000)
        assert await fleet.ledger.cap_used(fleet.cap, T0 + 3_600_000) == fleet.spent

    asyncio.run(run())


def test_grants_stop_at_the_cap_and_are_shared_near_it() -> None:
    async def run() -> None:
        fleet = _fleet()
        a, b, c = (SimAgent(n) for n in "abc")
        await fleet.ask(a, 0)
        assert a.granted == 10_000  # the configured lease size
        fleet.spend(a, 10_000)
        await fleet.ship(a)
        await fleet.gateway_call(75_000)  # 85,000 spent: 15,000 left
        await fleet.ask(b, 0)
        assert b.granted == 10_000  # a's lease is spent and shipped: it holds nothing, b is alone
        await fleet.ask(c, 0)
        assert c.granted == 2_500  # 5,000 left, shared with b (whose lease holds 10,000)
        await fleet.ask(a, 0)
        assert a.granted == 10_000 + 2_500 // 3  # 2,500 left, shared three ways
        assert await fleet.used() == LIMIT - 2_500 + 2_500 // 3
        fleet.spend(b, 10_000)
        fleet.spend(c, 2_500)
        await fleet.ask(c, 5_000)  # more than is left: c gets what is left, too little for that call
        assert c.granted - c.consumed == LIMIT - 85_000 - 10_000 - 2_500 - 2_500 // 3 < 5_000
        assert await fleet.used() == LIMIT
        assert fleet.spent <= LIMIT

    asyncio.run(run())


def test_a_request_for_a_rule_the_policy_does_not_have_is_refused_with_a_reason() -> None:
    async def run() -> None:
        fleet = _fleet()
        wrong = [LeaseItem("nope", "team", "ml", 0), LeaseItem("ml-cap", "team", "web", 0),
                 LeaseItem("ml-cap", "subject", "x", 0)]
        grants = await fleet.book.grant("a", "e", wrong, POLICY, T0)
        assert [g.granted for g in grants] == [0, 0, 0]
        assert "not in the control plane's policy" in (grants[0].error or "")
        assert "counts team 'ml', not 'web'" in (grants[1].error or "")
        assert "counts team usage, not subject" in (grants[2].error or "")
        assert await fleet.used() == 0

    asyncio.run(run())


def test_policy_explain_counts_live_spend_and_leases(tmp_path: Path) -> None:
    """`tollhouse policy explain` judges on the store's spend plus the leases agents hold, like the gateway."""
    directory = {"teams": [{"id": "ml"}], "people": [{"id": "alice", "team": "ml"}, {"id": "bob", "team": "ml"}]}
    cap = {"id": "ml-cap", "scope": "team", "team": "ml", "action": {"type": "hard_stop"},
           "condition": {"type": "budget", "threshold": 0.00004, "window": "monthly"}}  # 40,000 n$
    prices = {"overrides": [{"provider": "openai", "model": "gpt-4o-mini", "input_mtok": 0, "output_mtok": 0.05,
                             "max_output_tokens": 16}]}  # a call's worst case: 800 n$
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps({"directory": directory, "enforcement": "on", "pricing": prices,
                               "policy": {"rules": [cap]}}))
    data = tmp_path / "data"
    store = open_store("", data)
    now_ms = int(time.time() * 1000)
    base = {"subject_kind": "person", "project": None, "cost_centre": None, "provider": "openai",
            "endpoint": "chat", "path": "/v1/chat/completions", "metered": True, "model": "gpt-4o-mini",
            "requested_model": "gpt-4o-mini", "stream": False, "status": 200, "input_tokens": 1, "output_tokens": 16,
            "cache_read_tokens": 0, "cache_write_tokens": 0, "usage_source": "provider", "decision": "allow",
            "rule_id": None, "would": None, "latency_ms": 1.0, "ttfb_ms": None, "client_disconnected": False,
            "error": None}
    store.insert_events([CallEvent(id=f"e{n}", ts_ms=now_ms, subject="bob", team="ml", cost_nusd=800, **base)
                         for n in range(40)])  # 32,000 spent
    month = month_id(now_ms, 1, UTC)

    def explain(*extra: str) -> str:
        result = subprocess.run([sys.executable, "-m", "tollhouse", "policy", "explain", "--config", str(cfg),
                                 "--data-dir", str(data), "--user", "alice", "--model", "gpt-4o-mini", *extra],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        return result.stdout

    assert "decision: ALLOW" in explain()  # 32,000 + 800 fits
    # bob's laptop holds a lease of 7,500 it has not spent yet: 39,500 used, the next call would pass the cap
    store.save_leases([LeaseRow("bob-laptop", "ml-cap", "team", "ml", month, "e1", 0, 7_500, 0, 0, 0, 0, 0,
                                now_ms + 60_000, True)])
    live = explain()
    assert "$0.000039 of $0.00004 used" in live and "decision: BLOCK by rule ml-cap" in live
    assert "decision: ALLOW" in explain("--no-live")  # the rules alone
    store.close()


def test_token_rate_windows_are_leased_the_same_way() -> None:
    """A rolling tokens-per-minute cap: grants stop at the window's room and the room comes back as it rolls."""
    rate = CompiledPolicy(parse_rules([{"id": "tpm", "scope": "team", "team": "ml", "action": {"type": "hard_stop"},
                                        "condition": {"type": "usage", "metric": "tokens_per_minute",
                                                      "threshold": 1000}}]), 1)
    item = LeaseItem("tpm", "team", "ml", 0)

    async def run() -> None:
        stored: list[tuple[int, int]] = []  # (ts, tokens)

        async def loader(scope: str, ident: str, since_ms: int, bucket_ms: int) -> list[HistoryRow]:
            return [(ts - ts % bucket_ms, "openai", 0, n, 0, 1) for ts, n in stored if ts >= since_ms]

        ledger = LocalLedger(loader, 1, UTC, 900)
        book = LeaseBook(ledger, LeaseSizing(ttl_s=60, fraction=0.4), 1, UTC)  # 400-token leases
        grant = (await book.grant("a", "e", [item], rate, T0))[0]
        assert grant.error is None and grant.granted == 400 and grant.limit == 1000
        spent = LeaseItem("tpm", "team", "ml", 400, 700)  # a spent its 400; a call of 700 waits
        grant = (await book.grant("a", "e", [spent], rate, T0))[0]
        assert grant.granted == 1000  # only the window's room (600 more), not 400 + 700
        usage = [StoredUsage(T0, SCOPES, Charge("openai", 0, 1000, 0, 1))]  # a ships its 1,000 tokens
        stored.append((T0, 1000))
        ledger.count_stored(usage, rate.count_windows)
        await book.drawn("a", usage, T0)
        other = (await book.grant("b", "e", [item], rate, T0 + 1_000))[0]
        assert other.granted == 0 and other.used == 1000  # the minute is full
        later = (await book.grant("b", "e", [item], rate, T0 + 62_000))[0]
        assert later.granted == 400  # a minute later the window has room again

    asyncio.run(run())
