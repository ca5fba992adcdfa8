"""Budget leases: the control plane's side. Agents spend against slices of a cap's remaining budget.

The control plane is the authority for every cap's counter. An agent asks for a lease on each cap that applies
to its calls; a lease is held in the control plane's own ledger as a reservation of what is granted and not
yet seen spent, so the gateway's calls, other agents' grants and `GET /api/v1/spend` all count it. The agent
reserves locally (no round trip per call) and renews in the background.

Per (agent, rule, counter) the book keeps cumulative amounts, in the cap's counter units:
- `granted`: what the agent may have spent in all, over its lease's life;
- `reported`: what the agent says it has spent (settled, plus the worst case of its calls in flight);
- `drawn`: what its shipped events, counted in the counters, have spent.
While the lease is live the ledger holds `granted - drawn`; once it expires (the agent stopped spending it
before that: it measures the TTL from before it asked), `reported - drawn`. Neither is ever below zero.
Grants never exceed the cap's room, so the counter's used plus every lease outstanding stays within the cap:
what the fleet can spend over a cap is at most the leases outstanding when it is reached (see the README).

An agent process that restarts starts a new *epoch* (its own cumulative amounts restart at zero). What the
earlier process was granted beyond what it reported or shipped (its *carry*: it may have spent it just before
it died) is held as spent until `carry_ms` after its lease would have expired, time for its spooled calls to
arrive; then it is let go. So a killed agent strands nothing for long, and what it could have spent unseen is
at most the part of one lease it had not reported (renewals report at each third of a lease).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from tollhouse.events.db import StoreError
from tollhouse.events.store import LeaseRow
from tollhouse.ledger.base import Ledger
from tollhouse.ledger.stored import StoredUsage
from tollhouse.ledger.types import NANO_PER_USD, Charge, need_of
from tollhouse.ledger.windows import BillingMonths
from tollhouse.policy.compiled import Kind, Rule, ScopeKind
from tollhouse.policy.engine import Cap, CompiledPolicy, Level

log = logging.getLogger("tollhouse.leases")

LEASE_PROVIDER = "*lease*"  # the provider a lease of an all-provider cap is held under (no filter names it)
GRACE_MS = 2_000  # the control plane frees an expired lease this long after the agent stopped using it


def _cap_id(cap: Cap) -> tuple[object, ...]:
    return (cap.key, cap.metric, cap.providers)


class LeaseRequestError(ValueError):
    """One lease item that cannot be granted (shown to the agent and in its /healthz)."""


@dataclass(frozen=True, slots=True)
class LeaseItem:
    """What an agent asks about one cap: its counter, what it has spent under this lease so far (its epoch's
    cumulative amount), and the worst case of the call that waits for it (0 in background renewals)."""

    rule: str
    scope: str
    ident: str
    consumed: int
    need: int = 0
    release: bool = False  # give back what is not spent (the agent has stopped using the lease)

    @staticmethod
    def parse(data: object, at: str) -> LeaseItem:
        if not isinstance(data, dict):
            raise LeaseRequestError(f"{at}: expected an object like "
                                    '{"rule": "team-cap", "scope": "team", "id": "ml", "consumed": 0, "need": 0}')
        try:
            rule, scope, ident = data["rule"], data["scope"], data["id"]
            consumed, need = data.get("consumed", 0), data.get("need", 0)
            release = data.get("release", False)
        except KeyError as exc:
            raise LeaseRequestError(f"{at}: {exc.args[0]} is missing") from None
        if not all(isinstance(v, str) and v for v in (rule, scope, ident)):
            raise LeaseRequestError(f"{at}: rule, scope and id must be non-empty strings")
        for name, value in (("consumed", consumed), ("need", need)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**62:
                raise LeaseRequestError(f"{at}.{name}: must be a whole number of counter units, 0 or more")
        if not isinstance(release, bool):
            raise LeaseRequestError(f"{at}.release: must be true or false")
        return LeaseItem(rule, scope, ident, consumed, need, release)


@dataclass(frozen=True, slots=True)
class Grant:
    granted: int  # the epoch's cumulative grant: the agent may spend up to this in all
    used: int  # the counter's used without what this epoch of the agent spent or holds (it adds its own)
    limit: int
    ttl_s: float
    error: str | None = None

    def json(self) -> dict[str, Any]:
        return {"granted": self.granted, "used": self.used, "limit": self.limit, "ttl_s": self.ttl_s,
                "error": self.error}


@dataclass(slots=True)
class Lease:
    agent: str
    cap: Cap
    period: int  # the billing month (monthly caps) or 0 (rolling windows)
    epoch: str = ""
    offset: int = 0  # cumulative grant before this epoch
    granted: int = 0
    reported: int = 0
    drawn: int = 0
    drawn_base: int = 0  # `drawn` when this epoch began (the epoch's own shipped spend is drawn - drawn_base)
    carry: int = 0  # an earlier epoch's grant not seen reported or shipped, held as spent until carry_until_ms
    carry_until_ms: int = 0
    expires_ms: int = 0
    live: bool = False
    reservation: object | None = None
    held: int = 0  # what `reservation` holds in the ledger
    held_ms: int = 0  # when it was reserved (reservations expire after ledger.reservation_ttl_s: renewed before)
    holding: asyncio.Lock = field(default_factory=asyncio.Lock)  # one change of the hold at a time

    @property
    def outstanding(self) -> int:
        return max(0, (self.granted if self.live else self.reported) - self.drawn)

    @property
    def key(self) -> tuple[str, str, str, str]:
        """(agent, rule id, scope kind, scope id): the book's and the store's key."""
        return (self.agent, self.cap.rule.id, *self.cap.counter)

    def row(self) -> LeaseRow:
        return LeaseRow(*self.key, self.period, self.epoch, self.offset, self.granted,
                        self.reported, self.drawn, self.drawn_base, self.carry, self.carry_until_ms, self.expires_ms,
                        self.live)

    def forgive(self) -> None:
        """The earlier epoch's carry is let go: it counts as spent no more (its calls, if any, have arrived)."""
        self.offset -= self.carry
        self.granted -= self.carry
        self.reported -= self.carry
        self.carry = 0


@dataclass(frozen=True, slots=True)
class LeaseSizing:
    ttl_s: float = 60.0
    usd: Decimal | None = None  # a spend lease's size; None: `fraction` of the cap
    fraction: float = 0.01  # of the cap's limit (token and request caps always; spend caps without `usd`)

    def size(self, cap: Cap) -> int:
        if cap.metric == "spend" and self.usd is not None:
            return int(self.usd * NANO_PER_USD)
        return max(1, int(cap.units * self.fraction))


def charge_of(cap: Cap, amount: int) -> Charge:
    """A charge adding `amount` to the cap's metric alone."""
    provider = LEASE_PROVIDER if cap.providers is None else min(cap.providers)
    metric = cap.metric
    if metric == "spend":
        return Charge(provider, amount, 0, 0, 0)
    if metric in ("tokens", "input_tokens"):
        return Charge(provider, 0, amount, 0, 0)
    if metric == "output_tokens":
        return Charge(provider, 0, 0, amount, 0)
    return Charge(provider, 0, 0, 0, amount)


def counter_of(rule: Rule, scope: str, ident: str) -> tuple[str, str]:
    """The counter an agent names for a rule, checked against the rule: a cap on team `ml` is not a lease on
    team `web`."""
    if rule.kind not in (Kind.spend, Kind.tokens):
        raise LeaseRequestError(f"rule {rule.id!r} is not a spend or token cap")
    if rule.scope in (ScopeKind.individual, ScopeKind.service) or rule.type_name == "MONTHLY_SPEND_CAP_PER_SUBJECT":
        kind = "subject"
    else:
        kind = rule.scope.value
    if scope != kind:
        raise LeaseRequestError(f"rule {rule.id!r} counts {kind} usage, not {scope}")
    if kind == "org":
        return ("org", "*")
    if rule.target is not None and kind != "subject" and ident != rule.target:
        raise LeaseRequestError(f"rule {rule.id!r} counts {kind} {rule.target!r}, not {ident!r}")
    if rule.target is not None and rule.scope in (ScopeKind.individual, ScopeKind.service) and ident != rule.target:
        raise LeaseRequestError(f"rule {rule.id!r} counts {rule.target!r}, not {ident!r}")
    return (kind, ident)


async def _no_save(rows: Sequence[LeaseRow]) -> None:
    return None


async def _no_delete(keys: Sequence[tuple[str, str, str, str]]) -> None:
    return None


@dataclass
class LeaseBook:
    """Every lease granted, kept in the store (a restarted control plane holds what its agents still spend)."""

    ledger: Ledger
    sizing: LeaseSizing
    billing_day: int
    tz: ZoneInfo
    refresh_ms: int = 300_000  # a hold is reserved again after this long (a third of the reservation TTL)
    carry_ms: int = 300_000  # how long after its lease's expiry a restarted agent's earlier grant stays held
    save: Callable[[Sequence[LeaseRow]], Awaitable[None]] = _no_save
    delete: Callable[[Sequence[tuple[str, str, str, str]]], Awaitable[None]] = _no_delete
    _leases: dict[tuple[str, str, str, str], Lease] = field(default_factory=dict)  # (agent, rule, scope, id)
    _by_agent: dict[str, list[Lease]] = field(default_factory=dict)
    _by_cap: dict[tuple[object, ...], list[Lease]] = field(default_factory=dict)  # leases counting one cap
    grants: int = 0  # lease requests answered (a metric)

    def __post_init__(self) -> None:
        self._months = BillingMonths(self.billing_day, self.tz)

    def _period(self, cap: Cap, now_ms: int) -> int:
        return self._months.of(now_ms)[2] if cap.window.monthly else 0

    def cap_for(self, policy: CompiledPolicy, item: LeaseItem) -> Cap:
        rule = next((r for r in policy.rules if r.id == item.rule), None)
        if rule is None or not rule.enabled:
            raise LeaseRequestError(f"rule {item.rule!r} is not in the control plane's policy (version "
                                    f"{policy.version}); the agent's next bundle drops it")
        counter = counter_of(rule, item.scope, item.ident)
        level = Level(1000 if rule.scope is ScopeKind.org else 4, rule.scope, rule.target)
        return Cap(rule, level, counter, rule.count_window, rule.providers,
                   "spend" if rule.kind is Kind.spend else rule.metric, rule.threshold)

    async def grant(self, agent: str, epoch: str, items: Sequence[LeaseItem], policy: CompiledPolicy,
                    now_ms: int) -> list[Grant]:
        """Answer one agent's lease request, item by item (an item that cannot be granted says why)."""
        self.grants += 1
        out = []
        for item in items:
            try:
                cap = self.cap_for(policy, item)
            except LeaseRequestError as exc:
                out.append(Grant(item.consumed, 0, 0, self.sizing.ttl_s, str(exc)))
                continue
            out.append(await self._grant_one(agent, epoch, item, cap, now_ms))
        return out

    def _lease(self, agent: str, item: LeaseItem, cap: Cap, now_ms: int) -> Lease:
        key = (agent, item.rule, cap.counter[0], cap.counter[1])
        period = self._period(cap, now_ms)
        lease = self._leases.get(key)
        if lease is not None and _cap_id(lease.cap) == _cap_id(cap) and lease.cap.units == cap.units \
                and lease.period == period:
            lease.cap = cap
            return lease
        if lease is not None:  # a new month, or the rule changed: the old lease ends (what it holds is freed)
            self._drop(lease)
        lease = Lease(agent, cap, period)
        self._add(lease)
        return lease

    async def _grant_one(self, agent: str, epoch: str, item: LeaseItem, cap: Cap, now_ms: int) -> Grant:
        lease = self._lease(agent, item, cap, now_ms)
        if lease.epoch != epoch:  # the agent restarted: what its earlier process was granted counts as spent
            if lease.epoch:  # (a second restart adds its own carry to the first's)
                lease.carry += max(0, lease.granted - max(lease.reported, lease.drawn))
            lease.carry_until_ms = max(lease.expires_ms, now_ms) + self.carry_ms
            lease.offset = lease.granted
            lease.reported = max(lease.reported, lease.granted)
            lease.epoch = epoch
            lease.drawn_base = lease.drawn
        lease.reported = max(lease.reported, lease.offset + item.consumed)
        used = await self.ledger.cap_used(cap, now_ms)
        others = used - lease.held
        room = cap.units - others
        floor = lease.reported
        if item.release:
            granted = floor
        else:
            # near the cap, what is left is shared among the agents spending it (Doorman's fair share), so a
            # few machines' unspent leases do not strand the budget others are asking for
            free = max(0, room - max(0, floor - lease.drawn))
            sharing = 1 + sum(1 for other in self._on_counter(cap) if other is not lease and other.live
                              and other.outstanding and other.expires_ms > now_ms)
            size = max(item.need, min(self.sizing.size(cap), free // sharing))  # the waiting call's need first
            want = lease.offset + item.consumed + size
            granted = max(floor, min(want, lease.drawn + max(0, room)))
            if lease.live and lease.expires_ms > now_ms:
                granted = max(granted, lease.granted)  # a live grant is never taken back unasked
        before = (lease.granted, lease.live, lease.expires_ms)
        kept = max(floor, lease.granted) if lease.live and lease.expires_ms > now_ms else floor
        lease.granted = granted
        lease.live = not item.release
        lease.expires_ms = now_ms + int(self.sizing.ttl_s * 1000) + GRACE_MS
        # the new part of the grant is reserved under the cap, atomically with every other grant and call (a
        # grant computed from numbers another request changed meanwhile gets only what is left)
        await self._hold(lease, now_ms, force=True, ceiling=cap.units, kept=max(0, kept - lease.drawn))
        # `used` tells the agent the rest of the fleet's use: the agent adds its own epoch's spend itself, so the
        # part of it the counter already counts (`drawn`) is left out, and an earlier epoch's grant is counted in
        fleet = max(0, others - lease.drawn + lease.offset)
        try:
            await self.save([lease.row()])  # kept before the agent may spend it
        except StoreError as exc:  # not kept: not granted (what it had stays, and still expires)
            lease.granted, lease.live, lease.expires_ms = max(before[0], floor), before[1], before[2]
            await self._hold(lease, now_ms)
            return Grant(lease.granted - lease.offset, fleet, cap.units, self.sizing.ttl_s,
                         f"the control plane could not record the lease: {exc}")
        return Grant(lease.granted - lease.offset, fleet, cap.units, self.sizing.ttl_s)

    async def _hold(self, lease: Lease, now_ms: int, force: bool = False, ceiling: int | None = None,
                    kept: int = 0) -> None:
        """Make the ledger hold what the lease has outstanding (release the old hold, reserve the new one). One
        at a time per lease: a reserve that waits (Redis) must not cross another change of the same hold. With
        a `ceiling`, only `kept` (spent or granted before) is held whatever the counter says; the rest of the
        grant shrinks to what fits under the ceiling."""
        async with lease.holding:
            await self._rehold(lease, now_ms, force, ceiling, kept)

    async def _rehold(self, lease: Lease, now_ms: int, force: bool, ceiling: int | None, kept: int) -> None:
        amount = lease.outstanding
        fresh = now_ms - lease.held_ms < self.refresh_ms
        if amount == lease.held and (amount == 0 or (lease.reservation is not None and fresh and not force)):
            return
        if lease.reservation is not None:
            self.ledger.settle(lease.reservation, charge_of(lease.cap, 0))
            lease.reservation, lease.held = None, 0
        if amount == 0:
            return
        for _ in range(3):
            bound = None if ceiling is None or amount <= kept else ceiling
            charge = charge_of(lease.cap, amount)
            result = self.ledger.try_reserve([lease.cap], charge, now_ms, [bound])
            if result is None:
                result = await self.ledger.reserve([lease.cap], charge, now_ms, [bound])
            if result.reservation is not None:
                break
            # over the ceiling: another grant or call took part of the room since it was read
            fits = max(kept, min(amount, (ceiling or 0) - result.usage[0].used))
            lease.granted -= amount - fits
            amount = fits
        else:
            raise StoreError("the budget counter kept changing while a lease was reserved; try again")
        lease.reservation, lease.held, lease.held_ms = result.reservation, amount, now_ms

    async def drawn(self, agent: str, usage: Sequence[StoredUsage], now_ms: int) -> None:
        """An agent's shipped calls were counted in the counters: what they spent no longer needs holding."""
        leases = self._by_agent.get(agent)
        if not leases or not usage:
            return
        changed = []
        for lease in leases:
            cap, before = lease.cap, lease.drawn
            for ts_ms, scopes, charge in usage:
                if cap.counter in scopes and (not cap.window.monthly or self._period(cap, ts_ms) == lease.period):
                    lease.drawn += need_of(cap, charge)
            if lease.drawn != before:
                changed.append(lease)
        for lease in changed:
            await self._hold(lease, now_ms)
        await self._keep(changed)

    async def _keep(self, leases: Sequence[Lease]) -> None:
        """Save changed leases; a failure is logged (what is saved holds more than it should: never less)."""
        if not leases:
            return
        try:
            await self.save([lease.row() for lease in leases])
        except StoreError as exc:
            log.warning("could not save %d budget lease(s): %s", len(leases), exc)

    async def load(self, rows: Sequence[LeaseRow], policy: CompiledPolicy, now_ms: int) -> int:
        """Take back the leases a previous run granted (before serving): each holds what it has outstanding
        again. A lease whose rule is gone is dropped. Returns how many were taken back."""
        gone = []
        for row in rows:
            item = LeaseItem(row.rule, row.scope, row.ident, 0)
            try:
                cap = self.cap_for(policy, item)
            except LeaseRequestError:
                gone.append((row.agent, row.rule, row.scope, row.ident))
                continue
            lease = Lease(row.agent, cap, row.period, row.epoch, row.offset, row.granted, row.reported, row.drawn,
                          row.drawn_base, row.carry, row.carry_until_ms, row.expires_ms,
                          row.live and row.expires_ms > now_ms)
            self._add(lease)
            await self._hold(lease, now_ms)
        if gone:
            await self.delete(gone)
        return len(rows) - len(gone)

    async def sweep(self, now_ms: int) -> int:
        """Expire leases whose agent stopped renewing them; drop ended ones that hold nothing. Returns how many
        expired now."""
        expired: list[Lease] = []
        dropped: list[tuple[str, str, str, str]] = []
        for key, lease in list(self._leases.items()):
            if lease.live and lease.expires_ms <= now_ms:
                lease.live = False
                expired.append(lease)
            if lease.carry and lease.carry_until_ms <= now_ms:
                lease.forgive()
                expired.append(lease)
            await self._hold(lease, now_ms)  # what it holds now; an old hold is reserved again
            if not lease.live and lease.held == 0 and lease.expires_ms + 86_400_000 <= now_ms:
                self._drop(lease)
                dropped.append(key)
        await self._keep(expired)
        if dropped:
            try:
                await self.delete(dropped)
            except StoreError as exc:
                log.warning("could not delete %d ended budget lease(s): %s", len(dropped), exc)
        return len(expired)

    def _drop(self, lease: Lease) -> None:
        if lease.reservation is not None:
            self.ledger.settle(lease.reservation, charge_of(lease.cap, 0))
            lease.reservation, lease.held = None, 0
        if self._leases.get(lease.key) is lease:
            del self._leases[lease.key]
        for listed in (self._by_agent.get(lease.agent), self._by_cap.get(_cap_id(lease.cap))):
            if listed is not None and lease in listed:
                listed.remove(lease)

    def _on_counter(self, cap: Cap) -> list[Lease]:
        return self._by_cap.get(_cap_id(cap), [])

    def _add(self, lease: Lease) -> None:
        self._leases[lease.key] = lease
        self._by_agent.setdefault(lease.agent, []).append(lease)
        self._by_cap.setdefault(_cap_id(lease.cap), []).append(lease)

    def holding(self, cap: Cap) -> list[Lease]:
        """The leases on this cap that hold something."""
        return [lease for lease in self._on_counter(cap) if lease.held]
