"""Pure helpers of the benchmark suite (no I/O): RSS growth over a soak, the issue-8 verdicts.

Kept apart from ``suite.py`` so the unit tests import them without starting anything.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

Json = dict[str, Any]

RSS_LIMIT_MB = 150.0
FLAT_SLACK_MB = 5.0  # growth a soak may show and still count as flat (allocator noise, caches filling) ...
FLAT_SLACK_SHARE = 0.05  # ... or this share of the starting RSS, whichever is larger
EDGE_SAMPLES = 3  # the start and the end of a soak are each the median of this many samples
WARMUP_SHARE = 0.1  # the first tenth of a soak (caches filling) is left out of the growth figure


def rss_growth(samples: Sequence[tuple[float, float]]) -> Json:
    """Growth of one process's RSS over a soak, from (seconds since start, MB) samples in time order.

    start = the median of the first EDGE_SAMPLES samples after the warm-up tenth, end = the median of the
    last EDGE_SAMPLES; flat when end - start <= max(FLAT_SLACK_MB, FLAT_SLACK_SHARE * start)."""
    if not samples:
        return {"samples": 0, "start_mb": None, "end_mb": None, "max_mb": None, "grew_mb": None, "flat": None}
    t_end = samples[-1][0]
    steady = [mb for t, mb in samples if t >= WARMUP_SHARE * t_end] or [samples[-1][1]]
    start = statistics.median(steady[:EDGE_SAMPLES])
    end = statistics.median(steady[-EDGE_SAMPLES:])
    grew = end - start
    return {
        "samples": len(samples),
        "start_mb": round(start, 1),
        "end_mb": round(end, 1),
        "max_mb": round(max(mb for _, mb in samples), 1),
        "grew_mb": round(grew, 1),
        "flat": grew <= max(FLAT_SLACK_MB, FLAT_SLACK_SHARE * start),
    }


def verdict(name: str, value: float | None, limit: float, higher_is_better: bool, unit: str = "") -> Json:
    """One issue-8 target: `value` against `limit`; None (not measured) is neither pass nor fail."""
    if value is None:
        return {"target": name, "value": None, "limit": limit, "pass": None, "shown": "not measured"}
    ok = value >= limit if higher_is_better else value <= limit
    op = "≥" if higher_is_better else "≤"
    return {"target": name, "value": round(value, 3), "limit": limit, "pass": ok,
            "shown": f"{value:.3f}{unit} (target {op} {limit:g}{unit})"}


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b
