"""Amounts and cap reasons as people read them: never fewer digits than it takes to be true."""

from __future__ import annotations

import pytest

from test_ledger_local import _caps
from tollhouse.ledger.types import CapUsage
from tollhouse.money import cap_reason, fmt_usd


@pytest.mark.parametrize("nusd, shown", [
    (0, "$0"),
    (1_000_000_000, "$1"),
    (50_000_000_000, "$50"),
    (1_200_000_000_000, "$1,200"),
    (100_000_000, "$0.10"),
    (12_340_000_000, "$12.34"),
    (12_345_678_912, "$12.34"),  # cut, never rounded up
    (49_999_999_999, "$49.99"),  # not "$50.00": under the limit must not read as the limit
    (39_000, "$0.000039"),
    (39_999, "$0.000039"),
    (50_000, "$0.00005"),
    (10_000_000, "$0.01"),
    (39_000_000, "$0.039"),
    (1, "$0.000000001"),
    (1_000_000_001, "$1.00"),
    (-100_000_000, "-$0.10"),
])
def test_fmt_usd(nusd: int, shown: str) -> None:
    assert fmt_usd(nusd) == shown


def test_fmt_usd_shows_more_significant_digits_on_request() -> None:
    assert fmt_usd(12_345_678_912, significant=6) == "$12.3456"
    assert fmt_usd(39_999, significant=4) == "$0.00003999"
    assert fmt_usd(1_000_000_001, significant=20) == "$1.000000001"  # never past the nano-dollar


BUDGET = {"id": "b", "scope": "individual", "action": {"type": "hard_stop"},
          "condition": {"type": "budget", "threshold": 0.00005, "window": "monthly"}}
TEAM_BUDGET = {"id": "tb", "scope": "team", "action": {"type": "hard_stop"},
               "condition": {"type": "budget", "threshold": 50, "window": "monthly"}}
ORG_BUDGET = {"id": "ob", "scope": "org", "action": {"type": "hard_stop"},
              "condition": {"type": "budget", "threshold": 0.12345, "window": "monthly"}}
TOKENS = {"id": "tok", "scope": "individual", "action": {"type": "hard_stop"},
          "condition": {"type": "usage", "metric": "tokens_per_minute", "threshold": 500, "window": "1m"}}


@pytest.mark.parametrize("rule, used, reason", [
    (BUDGET, 39_000,
     "the BUDGET cap for subject alice would be exceeded ($0.000039 of $0.00005 used this month)"),
    (TEAM_BUDGET, 12_340_000_000,
     "the BUDGET cap for team t would be exceeded ($12.34 of $50 used this month)"),
    (TEAM_BUDGET, 49_999_999_999,
     "the BUDGET cap for team t would be exceeded ($49.99 of $50 used this month)"),
    # used and limit agree to two significant digits: shown with as many as tell them apart
    (ORG_BUDGET, 123_440_000, "the BUDGET cap for the org would be exceeded ($0.12344 of $0.12345 used this month)"),
    (TOKENS, 480, "the TOKEN_RATE_LIMIT cap for subject alice would be exceeded (480 of 500 tokens used in the "
                  "last 1m)"),
])
def test_cap_reason(rule: dict[str, object], used: int, reason: str) -> None:
    (cap,) = _caps([rule])
    assert cap_reason(CapUsage(cap, used, 30_000, cap.units, 60)) == reason
