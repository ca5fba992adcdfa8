"""The benchmark suite's pure helpers: wrk output parsing, RSS growth over a soak, verdicts, response framing."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_gateway import parse_wrk
from suite import read_response
from suite_stats import rss_growth, verdict

WRK_OUTPUT = """Running 10s test @ http://127.0.0.1:8787/openai/v1/chat/completions
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    11.06ms    5.10ms  95.32ms   80.12%
    Req/Sec     1.35k   120.45     1.60k    70.00%
  Latency Distribution
     50%   10.29ms
     75%   13.00ms
     90%   20.55ms
     99%   84.59ms
  26900 requests in 10.01s, 12.34MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 4
Requests/sec:   2687.31
Transfer/sec:      1.23MB
"""


def test_parse_wrk_reads_rate_percentiles_and_errors() -> None:
    r = parse_wrk(WRK_OUTPUT)
    assert r["requests_per_s"] == 2687.31
    assert r["requests"] == 26900 and r["duration_ms"] == 10010.0
    assert (r["p50_ms"], r["p90_ms"], r["p99_ms"]) == (10.29, 20.55, 84.59)
    assert r["max_ms"] == 95.32
    assert r["non_2xx"] == 4 and r["errors"] == 4 + 2 + 3


def test_rss_growth_skips_warmup_and_uses_medians_at_the_edges() -> None:
    # 100 s soak: a big jump in the first tenth (caches filling) is not growth; one spike is not either
    samples = [(0.0, 50.0), (5.0, 90.0)] + [(float(t), 100.0) for t in range(10, 101, 5)]
    samples[10] = (samples[10][0], 140.0)
    g = rss_growth(samples)
    assert g["start_mb"] == 100.0 and g["end_mb"] == 100.0 and g["grew_mb"] == 0.0
    assert g["max_mb"] == 140.0 and g["flat"] is True


def test_rss_growth_flags_a_steady_climb() -> None:
    samples = [(float(t), 100.0 + t * 0.2) for t in range(0, 601, 5)]  # +0.2 MB/s: a leak
    g = rss_growth(samples)
    assert g["grew_mb"] == pytest.approx(107.0, abs=1.0)
    assert g["flat"] is False
    assert rss_growth([])["flat"] is None


def test_rss_growth_tolerates_small_drift() -> None:
    samples = [(float(t), 120.0 + (3.0 if t > 50 else 0.0)) for t in range(0, 101, 5)]
    g = rss_growth(samples)
    assert g["grew_mb"] == 3.0 and g["flat"] is True


def test_verdicts() -> None:
    assert verdict("x", 30.0, 25, True)["pass"] is True
    assert verdict("x", 0.6, 0.5, False)["pass"] is False
    assert verdict("x", None, 1, True)["pass"] is None


def _read(raw: bytes) -> tuple[int, bytes]:
    async def go() -> tuple[int, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        status = await read_response(reader)
        return status, await reader.read()

    return asyncio.run(go())


def test_read_response_sized_and_chunked_leave_the_next_response_alone() -> None:
    sized = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloNEXT"
    assert _read(sized) == (200, b"NEXT")
    chunked = (b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\n\r\nNEXT")
    assert _read(chunked) == (403, b"NEXT")
