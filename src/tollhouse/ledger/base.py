"""What every ledger backend offers the gateway (embedded in-process, or Redis shared by gateways).

A ledger counts and reserves, atomically; it does not judge. The caller says, per cap, the most its counter
may hold after the call (a ceiling, or None to just count), and gets back plain numbers (`ReserveResult`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tollhouse.ledger.stored import StoredUsage
from tollhouse.ledger.types import Ceilings, Charge, ReserveResult
from tollhouse.policy.engine import Cap
from tollhouse.policy.rules import Window


class Ledger(Protocol):
    async def reserve(self, caps: Sequence[Cap], charge: Charge, now_ms: int, ceilings: Ceilings) -> ReserveResult:
        """Atomically: read each cap's used (settled plus other calls' reservations); if for every cap i with a
        ceiling `used_i + need_i <= ceilings[i]`, reserve the charge on every cap's counter, else reserve
        nothing (`over` lists the caps whose ceiling would be exceeded). Loads counters used for the first
        time from the store (raises StoreError). `ceilings` has one entry per cap (ValueError otherwise)."""
        ...

    def try_reserve(self, caps: Sequence[Cap], charge: Charge, now_ms: int, ceilings: Ceilings
                    ) -> ReserveResult | None:
        """The same as `reserve` when it can be done without waiting (no store read, no network), else None:
        then `reserve` must be awaited."""
        ...

    def settle(self, reservation: object, actual: Charge) -> None:
        """Release the reservation's hold and count the actual usage, once: a reservation that expired is
        still counted when it settles; settling again changes nothing (never raises; failures are logged)."""
        ...

    def count_stored(self, usage: Sequence[StoredUsage], windows: Sequence[Window]) -> None:
        """Count calls that were stored without a reservation here (an agent's shipped events) in the counters of
        their scopes over `windows` (every window the policy counts). Never raises."""
        ...

    async def warm(self, caps: Sequence[Cap], now_ms: int) -> None:
        """Have these caps' counters ready before a call needs them (the embedded ledger reads their history
        from the store; Redis keeps its counters itself)."""
        ...

    async def cap_used(self, cap: Cap, now_ms: int) -> int:
        """Settled plus reserved usage of a cap's counter, in counter units."""
        ...

    def expire(self, now_ms: int) -> int:
        """Release the holds of reservations older than the reservation TTL (their settles still count)."""
        ...

    async def close(self) -> None: ...
