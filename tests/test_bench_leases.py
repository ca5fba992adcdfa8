"""The lease benchmark's pure helpers: paired ratios, the overspend verdict, premature refusals, the sample at
the cap. (The benchmark itself starts a dozen processes for a minute and more: it is not run here.)"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_leases import WRK_LEASES, Sample, at_cap, median_ratio, overspend_figures, premature_refusals


def test_median_ratio_pairs_rounds() -> None:
    # a noisy machine: the rounds differ by 40 %, each round's pair by 2 %
    pairs = [(980.0, 1000.0), (588.0, 600.0), (1372.0, 1400.0)]
    assert round(median_ratio(pairs), 4) == 0.98
    assert median_ratio([(1.0, 0.0), (3.0, 2.0)]) == 1.5  # a failed run (0 req/s) is left out


def test_overspend_figures_compare_with_cap_and_bound() -> None:
    within = overspend_figures(cap=100_000, recorded=99_200, outstanding_at_cap=4_000, outstanding_end=0)
    assert within["bound_nusd"] == 104_000 and within["overspend_nusd"] == -800
    assert within["within_bound"] is True and within["cap_used_pct"] == 99.2
    over = overspend_figures(cap=100_000, recorded=104_800, outstanding_at_cap=4_000, outstanding_end=800)
    assert over["overspend_nusd"] == 4_800 and over["within_bound"] is False


def test_premature_refusals_are_those_before_a_later_answer() -> None:
    timeline = [(0.0, 200), (0.1, 403), (0.2, 200), (0.3, 429), (0.4, 403)]
    assert premature_refusals(timeline) == 1
    assert premature_refusals([(0.0, 403), (0.1, 403)]) == 0


def test_at_cap_is_the_first_sample_with_less_than_a_lease_of_room() -> None:
    samples = [Sample(0.0, 50, 10), Sample(0.1, 95, 20), Sample(0.2, 99, 30), Sample(0.3, 100, 5)]
    found = at_cap(samples, cap=100, lease=5)
    assert found is not None and found.t == 0.2
    assert at_cap(samples[:2], cap=100, lease=5) is None


def test_wrk_script_names_the_simulated_agents_like_the_python_client() -> None:
    script = WRK_LEASES % {"agents": 1000, "step": 66, "token": "tht_x"}
    assert 'string.format("sim-%04d", i)' in script and "Bearer tht_x" in script
    assert "local agents, step, n, consumed = 1000, 66, 0, {}" in script
