"""The agent's ledger: every cap is counted by the control plane; this machine spends against leases.

For each cap that applies to its calls the agent holds a lease (control/leases.py has the control plane's
side): a cumulative grant it may spend up to. Reservations are local and synchronous, like the embedded
ledger's; the lease is renewed in the background when a third of it is left or a third of its time, and asked
for in the call's path only when it is missing, expired or too small for the call. Unused leases go back.

The numbers given to `decide()` are the fleet's: a cap's `used` is the control plane's count without this
lease (as of the last answer) plus what this machine spent since, and never less than the limit minus what is
left of the lease, so a call the lease cannot cover reads as going over the cap.

The control plane unreachable: the agent spends what is left of its unexpired lease, then refuses calls under
hard caps saying so (LeaseUnavailable); it never falls back to counting alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from pyreqwest.client import Client

from tollhouse.agent.control_request import control_post
from tollhouse.gateway.upstream import RequestError, build_client
from tollhouse.ledger.stored import StoredUsage
from tollhouse.ledger.types import CapUsage, Ceilings, Charge, LeaseUnavailable, ReserveResult, check_ceilings, need_of
from tollhouse.ledger.windows import BillingMonths, month_seconds_left
from tollhouse.policy.engine import Cap
from tollhouse.policy.rules import Window

log = logging.getLogger("tollhouse.agent")

LEASE_PATH = "/api/v1/agent/leases"
LeaseKey = tuple[str, str, str]  # (rule id, scope kind, scope id)


@dataclass(slots=True)
class Held:
    """This machine's lease on one cap, in the cap's counter units."""

    cap: Cap
    period: int
    granted: int = 0  # cumulative: may spend up to this in all
    settled: int = 0
    reserved: int = 0  # the worst case of calls in flight
    others: int = 0  # the fleet's used without this lease, at the last answer
    limit: int = 0
    expires: float = 0.0  # monotonic
    answered: bool = False  # the control plane has answered for it at least once
    size: int = 0  # what was left of it right after the last answer (renewed when a third of that is left)
    refused_at: float = -1e9  # monotonic: when an answer last left it too small for a call
    last_use: float = 0.0
    error: str | None = None

    @property
    def consumed(self) -> int:
        return self.settled + self.reserved

    @property
    def left(self) -> int:
        return max(0, self.granted - self.consumed)


@dataclass(slots=True)
class Reservation:
    parts: list[tuple[Held, int]]  # (lease, what was reserved on it)
    caps: list[Cap]
    ts_ms: int
    settled: bool = False
    held: bool = True


class _Ask(Exception):
    """A lease must be asked for before the call can be judged."""

    def __init__(self, needs: dict[LeaseKey, tuple[Cap, int]]) -> None:
        self.needs = needs


@dataclass
class LeaseLedger:
    control_plane: str
    token: str
    agent_id: str
    billing_day: int
    tz: ZoneInfo
    reservation_ttl_s: float = 900.0
    ask_timeout_s: float = 3.0
    proxy: str | None = None
    mono: Callable[[], float] = time.monotonic
    epoch: str = field(default_factory=lambda: uuid.uuid4().hex)
    leases: dict[LeaseKey, Held] = field(default_factory=dict)
    _reservations: dict[int, tuple[Reservation, float]] = field(default_factory=dict)
    _asking: asyncio.Future[None] | None = None
    _renewing: asyncio.Task[None] | None = None
    _client: Client | None = None
    ttl_s: float = 60.0  # the control plane's lease TTL (from its answers)
    connected: bool = False
    error: str | None = None
    requests: int = 0
    retry_s: float = 2.0  # after a failed request, calls do not wait for the control plane for this long
    _down_until: float = 0.0  # monotonic
    _months: BillingMonths = field(init=False)

    def __post_init__(self) -> None:
        self._months = BillingMonths(self.billing_day, self.tz)

    # the Ledger protocol

    def try_reserve(self, caps: Sequence[Cap], charge: Charge, now_ms: int, ceilings: Ceilings
                    ) -> ReserveResult | None:
        try:
            return self._reserve_now(caps, charge, now_ms, ceilings)
        except _Ask:
            return None

    async def reserve(self, caps: Sequence[Cap], charge: Charge, now_ms: int, ceilings: Ceilings) -> ReserveResult:
        down = self.mono() < self._down_until  # a control plane that just failed is not waited for again
        for attempt in range(3):
            # a grant this machine's other calls spent while the answer was on its way (the control plane had
            # room for this call when asked) is asked for once more, not read as the cap being reached
            final = down or attempt == 2 or (attempt == 1 and not self.connected)
            try:
                return self._reserve_now(caps, charge, now_ms, ceilings, asked=final)
            except _Ask as ask:
                if final:  # still no usable lease: the control plane did not answer
                    raise self._unavailable(ask.needs) from None
                await self._ask(ask.needs, now_ms)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def settle(self, reservation: object, actual: Charge) -> None:
        assert isinstance(reservation, Reservation)
        if reservation.settled:
            return
        reservation.settled = True
        if reservation.held:
            self._release(reservation)
        for (held, _), cap in zip(reservation.parts, reservation.caps, strict=True):
            held.settled += need_of(cap, actual)
        self._maybe_renew()

    async def warm(self, caps: Sequence[Cap], now_ms: int) -> None:
        return None  # leases are asked for by the first call that needs them

    async def cap_used(self, cap: Cap, now_ms: int) -> int:
        key = _key(cap)
        held = self.leases.get(key)
        if held is None or not held.answered:
            await self._ask({key: (cap, 0)}, now_ms)
            held = self.leases.get(key)
        if held is None or not held.answered:
            raise self._unavailable({key: (cap, 0)})
        return held.others + held.consumed

    def count_stored(self, usage: Sequence[StoredUsage], windows: Sequence[Window]) -> None:
        return None  # an agent stores only its own calls; the control plane counts them when they are shipped

    def expire(self, now_ms: int) -> int:
        """Release the holds of calls unsettled after the reservation TTL (their settles still count)."""
        cutoff = self.mono() - self.reservation_ttl_s
        stale = [res for res, at in self._reservations.values() if at <= cutoff]
        for res in stale:
            self._release(res)
        return len(stale)

    async def close(self) -> None:
        """Give back what is left of every lease (best effort, bounded), then stop."""
        if self._renewing is not None:
            self._renewing.cancel()
            await asyncio.gather(self._renewing, return_exceptions=True)
        if any(h.left for h in self.leases.values()) and self.connected:
            for held in self.leases.values():
                held.granted = held.consumed  # nothing more is spent from here on
            try:
                await asyncio.wait_for(self._send(list(self.leases.items()), {}, release=True), 2.0)
            except (TimeoutError, RequestError, LeaseProtocolError) as exc:
                log.warning("could not give the budget leases back to the control plane (%s); they expire "
                            "there in %g s", exc, self.ttl_s)
        if self._client is not None:
            await self._client.close()

    # the hot path

    def _reserve_now(self, caps: Sequence[Cap], charge: Charge, now_ms: int, ceilings: Ceilings,
                     asked: bool = False) -> ReserveResult:
        if len(ceilings) != len(caps):
            check_ceilings(caps, ceilings)  # raises
        now = self.mono()
        usage: list[CapUsage] = []
        over: list[int] = []
        parts: list[tuple[Held, int]] = []
        needs: dict[LeaseKey, tuple[Cap, int]] = {}
        for n, cap in enumerate(caps):
            key = _key(cap)
            held = self.leases.get(key)
            need = need_of(cap, charge)
            ceiling = ceilings[n]
            period = self._period(cap, now_ms)
            if held is None or held.period != period:
                held = self.leases[key] = Held(cap, period, limit=cap.units)
            held.cap = cap
            live = held.answered and held.expires > now
            if ceiling is not None:
                short = need > held.left and now - held.refused_at > 1.0  # the control plane may have more
                if not live or (short and not (asked and self.connected)):
                    needs[key] = (cap, need)
                    continue
            elif not held.answered and not asked:
                needs[key] = (cap, need)  # a soft cap: the fleet's count is wanted, but never waited for twice
                continue
            if ceiling is not None:
                used = max(held.others + held.consumed, cap.units - held.left)
            else:
                used = held.others + held.consumed
            retry = 0
            if used + need > cap.units:
                retry = (month_seconds_left(now_ms, self.billing_day, self.tz) if cap.window.monthly
                         else max(1, min(cap.window.seconds, int(self.ttl_s))))
            usage.append(CapUsage(cap, used, need, cap.units, retry))
            parts.append((held, need))
            if ceiling is not None and used + need > ceiling:
                over.append(n)
        if needs:
            raise _Ask(needs)
        if over:
            return ReserveResult(usage, None, tuple(over))
        for held, need in parts:
            held.reserved += need
            held.last_use = now
        res = Reservation(parts, list(caps), now_ms)
        self._reservations[id(res)] = (res, now)
        self._maybe_renew()
        return ReserveResult(usage, res)

    def _release(self, res: Reservation) -> None:
        res.held = False
        self._reservations.pop(id(res), None)
        for held, need in res.parts:
            held.reserved -= need

    def _period(self, cap: Cap, now_ms: int) -> int:
        return self._months.of(now_ms)[2] if cap.window.monthly else 0

    # talking to the control plane

    def _unavailable(self, needs: dict[LeaseKey, tuple[Cap, int]]) -> LeaseUnavailable:
        where = self.control_plane
        refused = [h.error for k in needs if (h := self.leases.get(k)) is not None and h.error]
        if refused and self.connected:
            return LeaseUnavailable(f"the control plane at {where} refused a budget lease: {refused[0]}",
                                    f"the control plane at {where} refused this machine a budget lease "
                                    f"({refused[0]})")
        why = self.error or "it did not answer"
        return LeaseUnavailable(
            f"no budget lease from the control plane at {where} ({why})",
            f"the control plane at {where} is unreachable ({why}) and this machine's budget lease for "
            f"{', '.join(sorted({cap.rule.id for cap, _ in needs.values()}))} is used up or expired")

    async def _ask(self, needs: dict[LeaseKey, tuple[Cap, int]], now_ms: int) -> None:
        """Ask for these leases now, with every other lease held. One request is in flight at a time: a call
        that finds one going waits for its answer instead, and asks itself if that answer does not cover it."""
        while self._asking is not None:
            await asyncio.shield(self._asking)
            if self._answered_for(needs):
                return
        self._asking = asyncio.get_running_loop().create_future()
        try:
            for key, (cap, _) in needs.items():
                if key not in self.leases or self.leases[key].period != self._period(cap, now_ms):
                    self.leases[key] = Held(cap, self._period(cap, now_ms), limit=cap.units)
            try:  # in this task: the caller reserves from the answer before any other call can spend it
                async with asyncio.timeout(self.ask_timeout_s):
                    await self._send(list(self.leases.items()), {k: n for k, (_, n) in needs.items()})
            except (TimeoutError, RequestError, LeaseProtocolError) as exc:
                self._failed(exc)
        finally:
            self._asking.set_result(None)
            self._asking = None

    def _answered_for(self, needs: dict[LeaseKey, tuple[Cap, int]]) -> bool:
        """Whether the last answer settles these needs: the leases cover them, or the control plane did not
        answer, or it has just said it has no room for them (asking again at once would not help)."""
        if not self.connected:
            return True
        now = self.mono()
        for key, (_, need) in needs.items():
            held = self.leases.get(key)
            if held is None or not held.answered or held.expires <= now:
                return False
            if held.left < need and now - held.refused_at > 1.0:
                return False
        return True

    def _maybe_renew(self) -> None:
        """Renew in the background when a lease in use is a third spent-through or a third of its time is gone."""
        if self._renewing is not None or self._asking is not None:
            return
        now = self.mono()
        for held in self.leases.values():
            if not held.answered or held.error is not None:
                continue
            low = held.left * 3 < held.size or held.expires - now < self.ttl_s * 2 / 3
            if low and now - held.last_use < self.ttl_s:
                self._renewing = asyncio.get_running_loop().create_task(self._renew(), name="tollhouse-leases")
                self._renewing.add_done_callback(self._renewed)
                return

    def _renewed(self, task: asyncio.Task[None]) -> None:
        self._renewing = None

    async def _renew(self) -> None:
        now = self.mono()
        active: list[tuple[LeaseKey, Held]] = []
        idle: list[tuple[LeaseKey, Held]] = []
        for key, held in self.leases.items():
            if now - held.last_use < self.ttl_s or held.reserved:
                active.append((key, held))
            elif held.left:
                idle.append((key, held))
        try:
            if active:
                await asyncio.wait_for(self._send(active, {}), self.ask_timeout_s * 3)
            if idle:  # unused for a whole TTL: give what is left back, so others can spend it
                for _, held in idle:
                    held.granted = held.consumed
                await asyncio.wait_for(self._send(idle, {}, release=True), self.ask_timeout_s * 3)
        except (TimeoutError, RequestError, LeaseProtocolError) as exc:
            self._failed(exc)

    async def run_renewals(self, every_s: float | None = None) -> None:
        """Keep the leases in use alive (and give idle ones back) while no call triggers a renewal."""
        while True:
            await asyncio.sleep(every_s or max(0.5, self.ttl_s / 3))
            if self._renewing is None and self._asking is None and self.leases:
                self._renewing = asyncio.get_running_loop().create_task(self._renew(), name="tollhouse-leases")
                self._renewing.add_done_callback(self._renewed)

    async def _send(self, items: list[tuple[LeaseKey, Held]], needs: dict[LeaseKey, int], release: bool = False
                    ) -> None:
        sent = self.mono()  # a lease is spent no later than its TTL after we asked (the control plane frees it
        #                     after that, measured from when it answered)
        asked_at = {key: held.consumed for key, held in items}
        body = {"epoch": self.epoch, "leases": [
            {"rule": key[0], "scope": key[1], "id": key[2], "consumed": asked_at[key], "need": needs.get(key, 0),
             "release": release} for key, _ in items]}
        if self._client is None:
            self._client = build_client(30.0, self.proxy)
        self.requests += 1
        response = await control_post(self._client, self.control_plane.rstrip("/") + LEASE_PATH, self.token,
                                      self.agent_id, orjson.dumps(body)).send()
        status, raw = response.status, bytes(await response.bytes())
        if status != 200:
            raise LeaseProtocolError(f"the control plane answered {status} to {LEASE_PATH}: {_message(raw)}")
        try:
            data = orjson.loads(raw)
            ttl_s = float(data["ttl_s"])
            answers = data["leases"]
            if not isinstance(answers, list) or len(answers) != len(items):
                raise ValueError("one answer per lease")
            for (_, held), answer in zip(items, answers, strict=True):
                _apply(held, answer, sent, ttl_s, release)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise LeaseProtocolError(f"the control plane's lease answer is not understood: {exc}") from None
        self.ttl_s = ttl_s
        if not self.connected:
            log.info("budget leases: connected to the control plane at %s", self.control_plane)
        self.connected, self.error = True, None
        now = self.mono()
        for key, need in needs.items():
            held = self.leases[key]
            # the cap has no room for this call: not asked again for a second (a grant that covered it when asked
            # but was spent since by other calls of this machine is no refusal)
            if held.granted - asked_at.get(key, held.consumed) < need:
                held.refused_at = now

    def _failed(self, exc: BaseException) -> None:
        error = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            error = f"no answer within {self.ask_timeout_s:g} s"
        self._down_until = self.mono() + self.retry_s
        if self.connected or self.error is None:
            log.warning("budget leases: cannot reach the control plane at %s (%s); spending what is left of the "
                        "current leases", self.control_plane, error)
        self.connected, self.error = False, error

    def health(self) -> dict[str, Any]:
        now = self.mono()
        return {"connected": self.connected, "error": self.error, "requests": self.requests, "leases": [
            {"rule": key[0], "scope": key[1], "id": key[2], "granted": h.granted, "consumed": h.consumed,
             "left": h.left, "fleet_used": h.others + h.consumed, "limit": h.limit,
             "expires_in_s": round(max(0.0, h.expires - now), 1) if h.answered else None, "error": h.error}
            for key, h in sorted(self.leases.items())]}


class LeaseProtocolError(Exception):
    """The control plane refused a lease request or answered something unexpected."""


def _key(cap: Cap) -> LeaseKey:
    return (cap.rule.id, cap.counter[0], cap.counter[1])


def _apply(held: Held, answer: object, sent: float, ttl_s: float, release: bool) -> None:
    if not isinstance(answer, dict):
        raise TypeError("a lease answer is not an object")
    error = answer.get("error")
    held.error = str(error) if error else None
    granted, used, limit = int(answer["granted"]), int(answer["used"]), int(answer["limit"])
    if error:  # e.g. a rule the control plane's policy no longer has: nothing to spend until it is resolved
        held.granted, held.answered, held.expires = held.consumed, False, 0.0
        return
    held.granted = held.consumed if release else max(granted, 0)
    held.others, held.limit = max(0, used), limit
    held.expires = sent + ttl_s
    held.answered = True
    held.size = held.left


def _message(raw: bytes) -> str:
    try:
        return str(orjson.loads(raw)["error"]["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return raw[:200].decode(errors="replace")
