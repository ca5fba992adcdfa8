"""Money and cap usage as people read them: amounts with enough digits to be true.

An amount is never shown larger than it is (digits are cut, not rounded up), always with at least two
significant digits, so $0.000039 never reads as $0.0000, and cents as cents ("$0.10", "$12.34", "$50").
"""

from __future__ import annotations

from tollhouse.ledger.types import NANO_PER_USD, CapUsage

_NANO_DIGITS = 9


def fmt_usd(nusd: int, significant: int = 2) -> str:
    """`nusd` nano-dollars as dollars: whole dollars without decimals ("$50", "$1,200"), else at least two
    decimals and at least `significant` significant digits, cut (never rounded up) at the nano-dollar:
    "$0.10", "$12.34", "$0.000039", "$0.00005"."""
    if nusd < 0:
        return "-" + fmt_usd(-nusd, significant)
    dollars, frac = divmod(nusd, NANO_PER_USD)
    if frac == 0:
        return f"${dollars:,}"
    digits = f"{frac:09d}"
    decimals = 2
    if dollars == 0:  # the first non-zero digit, then significant - 1 more
        first = len(digits) - len(digits.lstrip("0"))
        decimals = max(decimals, first + significant)
    else:
        decimals = max(decimals, significant - len(str(dollars)))
    decimals = min(decimals, _NANO_DIGITS)
    shown = digits[:decimals]
    if decimals > 2:
        shown = shown[:2] + shown[2:].rstrip("0")
    return f"${dollars:,}.{shown}"


def _amounts(usage: CapUsage) -> tuple[str, str]:
    """Used and limit, with as many digits as it takes for them not to read the same when they differ."""
    significant = 2
    while True:
        used, limit = fmt_usd(usage.used, significant), fmt_usd(usage.limit, significant)
        if used != limit or usage.used == usage.limit or significant >= 2 * _NANO_DIGITS:
            return used, limit
        significant += 1


def cap_reason(usage: CapUsage) -> str:
    """Why a call goes over a cap, in words: which cap, for whom, what is used of the limit, over what time."""
    cap = usage.cap
    who = "the org" if cap.counter[0] == "org" else f"{cap.counter[0]} {cap.counter[1]}"
    if cap.metric == "spend":
        used, limit = _amounts(usage)
        have = f"{used} of {limit} used"
    else:
        have = f"{usage.used} of {usage.limit} {cap.metric.replace('_', ' ')} used"
    per = "this month" if cap.window.monthly else f"in the last {cap.window.label}"
    return f"the {cap.rule.type_name} cap for {who} would be exceeded ({have} {per})"
