"""What a ledger is given and what it answers: plain numbers, no verdicts.

A ledger counts and reserves atomically. Whether a call may go, and how a refusal is worded, is decided
by its caller from these numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from tollhouse.events.db import StoreError
from tollhouse.policy.engine import Cap

NANO_PER_USD = 1_000_000_000


class LeaseUnavailable(StoreError):
    """An agent's budget lease is used up or expired and its control plane cannot be reached for another."""

    def __init__(self, message: str, because: str) -> None:
        super().__init__(message)
        self.because = because  # for the block message: "the control plane at ... is unreachable ..."

METRICS = ("spend", "input_tokens", "output_tokens", "requests")
_SPEND, _IN, _OUT, _REQ = range(4)


class Charge(NamedTuple):
    """What one call adds to a counter: nano-dollars, tokens, one request. (A tuple: built twice per
    metered call, so it must be cheap to make.)

    `priced` is False when no price is known for the call's model: `spend_nusd` is then 0 and counts as
    such; a caller that wants to treat unpriced calls differently reads this flag (the ledger does not)."""

    provider: str
    spend_nusd: int
    input_tokens: int
    output_tokens: int
    requests: int = 1
    priced: bool = True

    def vector(self) -> tuple[int, int, int, int]:
        return self[1:5]  # (spend_nusd, input_tokens, output_tokens, requests): one slice, not four field reads


def metric_of(vec: Sequence[int], metric: str) -> int:
    if metric == "spend":
        return vec[_SPEND]
    if metric == "tokens":
        return vec[_IN] + vec[_OUT]
    if metric == "input_tokens":
        return vec[_IN]
    if metric == "output_tokens":
        return vec[_OUT]
    return vec[_REQ]


def need_of(cap: Cap, charge: Charge) -> int:
    """What the charge adds to the cap's counter, in counter units (0 for a provider the cap does not count)."""
    if cap.providers is not None and charge.provider not in cap.providers:
        return 0
    return metric_of(charge.vector(), cap.metric)


Ceilings = Sequence[int | None]
"""Per cap, the most its counter may hold after the call (counter units); None: no ceiling, just count."""


class CapUsage(NamedTuple):
    """One cap's counter at the moment of the reserve, in counter units (nano-dollars for spend)."""

    cap: Cap
    used: int  # before this call: settled plus other calls' reservations
    need: int  # what this call adds (its worst case)
    limit: int  # the cap's limit
    retry_after_s: int  # when used + need > limit: seconds until `need` fits under `limit`; else 0


@dataclass(slots=True)
class ReserveResult:
    usage: list[CapUsage]  # one per cap, in the order given
    reservation: object | None  # the backend's reservation; None when a ceiling would be exceeded
    over: tuple[int, ...] = ()  # indexes of the caps whose ceiling would be exceeded (then nothing is reserved)


def check_ceilings(caps: Sequence[Cap], ceilings: Ceilings) -> None:
    if len(ceilings) != len(caps):
        raise ValueError(f"reserve was given {len(ceilings)} ceilings for {len(caps)} caps: pass one per cap "
                         "(None for a cap that is only counted)")
