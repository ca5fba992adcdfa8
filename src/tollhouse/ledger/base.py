"""What every ledger backend offers the gateway (embedded in-process, or Redis shared by gateways)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tollhouse.ledger.local import Charge, ReserveResult
from tollhouse.policy.engine import Cap


class Ledger(Protocol):
    async def reserve(self, caps: Sequence[Cap], charge: Charge, now_ms: int, enforce: bool) -> ReserveResult:
        """Check every cap and reserve the worst case on all of them, atomically, loading counters used
        for the first time from the store (raises StoreError)."""
        ...

    def try_reserve(self, caps: Sequence[Cap], charge: Charge, now_ms: int, enforce: bool) -> ReserveResult | None:
        """The same as `reserve` when it can be done without waiting (no store read, no network), else None:
        then `reserve` must be awaited."""
        ...

    def settle(self, reservation: object, actual: Charge) -> None:
        """Release the reservation and count the actual usage (never raises; failures are logged)."""
        ...

    async def warm(self, caps: Sequence[Cap], now_ms: int) -> None:
        """Have these caps' counters ready before a call needs them (the embedded ledger reads their history
        from the store; Redis keeps its counters itself)."""
        ...

    async def cap_used(self, cap: Cap, now_ms: int) -> int:
        """Settled plus reserved usage of a cap's counter, in counter units."""
        ...

    def expire(self, now_ms: int) -> int: ...

    async def close(self) -> None: ...
