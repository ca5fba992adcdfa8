#!/usr/bin/env python3
"""Alert evaluation adds nothing measurable to the request path.

Two gateways (`tollhouse serve` subprocesses) in front of the mock provider, with the same policy: a WARN rule
that fires on every call and a monthly team budget that crosses its thresholds. One has no alert channels
(alerts off); the other sends to a Slack stand-in this script serves (alerts on). An open-loop client sends
1,000 calls/s (paced, 20 people), alternating rounds between the two, and records each call's latency. Then:
- latency percentiles, side by side, and the achieved rate;
- what the on-gateway raised and delivered: one rule alert per person per dedup window with the count of its
  firings (their sum is every call), budget thresholds once each, every message received exactly once;
- the hand-off's own cost on the request path (`AlertQueue.offer`, in-process), in nanoseconds per call;
- anomaly detection's precision and recall on generated history (anomaly_history.py).

    python benchmarks/bench_alerts.py [--rate 1000] [--seconds 8] [--rounds 2] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import timeit
from collections import Counter
from decimal import Decimal
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import uvloop

from anomaly_history import generate, score
from bench_gateway import (
    HOST,
    USER_HEADER,
    Target,
    _read_response,
    admin_get,
    cpu_seconds,
    free_port,
    gateway_config,
    percentiles_ms,
    request_bytes,
    start_gateway,
    start_mock,
    stop_service,
)
from tollhouse.alerts.config import AlertsConfig
from tollhouse.alerts.evaluate import Evaluator
from tollhouse.alerts.handoff import AlertQueue
from tollhouse.alerts.routing import Router
from tollhouse.events.model import CallEvent
from tollhouse.ledger.types import CapUsage
from tollhouse.policy.compiled import MONTHLY, ScopeKind
from tollhouse.policy.decide import Outcome, Verdict
from tollhouse.policy.engine import Cap, Decision, Level, Violation
from tollhouse.policy.rules import parse_rules

HERE = Path(__file__).resolve().parent
Json = dict[str, Any]
PEOPLE = [f"dev{i:02d}" for i in range(20)]
WORKERS = 48  # connections: enough that a slow call never holds up the schedule


class SlackStandIn:
    def __init__(self) -> None:
        self.received: list[Json] = []
        self._lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
                with stand_in._lock:
                    stand_in.received.append(body)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.server.server_address[1]}/services/T/B/x"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def policy(alerts: Json | None) -> Json:
    rules = [
        {"id": "mini-watch", "scope": "org",
         "condition": {"type": "model", "operator": "in", "models": ["gpt-4o-mini"]},
         "action": {"type": "alert", "message": "every call fires this"}},
        {"id": "eng-budget", "scope": "team", "team": "eng", "condition": {"type": "budget", "threshold": 0.02},
         "action": {"type": "alert"}},
    ]
    directory = {"org": "bench", "teams": [{"id": "eng"}], "people": [{"id": p, "team": "eng"} for p in PEOPLE]}
    cfg: Json = {"identity": {"trust_user_header": True}, "directory": directory, "policy": {"rules": rules}}
    if alerts is not None:
        cfg["alerts"] = alerts
    return cfg


async def paced(targets: list[Target], pools: list[list[bytes]], rate: float, seconds: float) -> list[Json]:
    """Open loop: call i is due at start + i / rate, whatever earlier calls are doing, and goes to
    targets[i % len(targets)] (two targets: paired calls under the same conditions)."""
    total = int(rate * seconds)
    n = len(targets)
    latencies: list[list[int]] = [[] for _ in targets]
    statuses: list[Counter[int]] = [Counter() for _ in targets]
    errors = [0] * n
    lateness: list[float] = []
    next_i = [0] * n
    start = time.perf_counter() + 0.05

    async def worker(which: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, targets[which].port)
        pool = pools[which]
        try:
            while True:
                k = next_i[which]
                i = k * n + which
                if i >= total:
                    return
                next_i[which] += 1
                due = start + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                lateness.append(max(0.0, time.perf_counter() - due))
                t0 = time.perf_counter_ns()
                writer.write(pool[k % len(pool)])
                try:
                    statuses[which][await _read_response(reader)] += 1
                except (OSError, ValueError, asyncio.IncompleteReadError):
                    errors[which] += 1
                    return
                latencies[which].append(time.perf_counter_ns() - t0)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    await asyncio.gather(*(worker(w % n) for w in range(WORKERS * n)))
    elapsed = time.perf_counter() - start
    late = round(statistics.quantiles(lateness, n=100)[98] * 1000, 2)
    return [{**percentiles_ms(latencies[w]), "calls": len(latencies[w]),
             "rate_per_s": round(len(latencies[w]) / elapsed, 1),
             "non_2xx": sum(c for st, c in statuses[w].items() if not 200 <= st < 300), "errors": errors[w],
             "client_late_p99_ms": late} for w in range(n)]


def merge(rounds: list[Json]) -> Json:
    keys = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "max_ms", "gateway_cpu_ms_per_call", "client_late_p99_ms")
    out: Json = {k: round(statistics.median(r[k] for r in rounds), 4) for k in keys if k in rounds[0]}
    out["calls"] = sum(r["calls"] for r in rounds)
    out["rate_per_s"] = round(statistics.fmean(r["rate_per_s"] for r in rounds), 1)
    out["non_2xx"] = sum(r["non_2xx"] for r in rounds)
    out["errors"] = sum(r["errors"] for r in rounds)
    out["rounds"] = rounds
    return out


def offer_cost_ns() -> Json:
    """The request path's one alerting statement, in-process: a call that fires a rule, alerts on and off."""
    event = CallEvent("e", 0, "dev00", "employee", "eng", None, None, "openai", "chat", "/v1/chat/completions", True,
                      "gpt-4o-mini", "gpt-4o-mini", False, 200, 25, 16, 0, 0, 100, "response", "allow", None, None,
                      1.0, 1.0, False, None)

    class _D:
        violations = (object(),)

    verdict = Verdict(Outcome.allow, True, _D())  # type: ignore[arg-type]
    out: Json = {}
    for name, enabled in (("alerts_off", False), ("alerts_on_rule_fires", True)):
        q = AlertQueue(bound=10_000_000)
        q.enabled = enabled
        n = 1_000_000
        best = min(timeit.repeat(partial(q.offer, event, verdict), number=n, repeat=5))
        out[name] = round(best / n * 1e9, 1)
    return out


def evaluate_cost_us() -> float:
    """The background evaluation's CPU per call (in-process): batches of 100 calls from 20 people, each firing
    two alert rules and counted by a cap that is over its thresholds (the benchmark policy's worst case)."""
    cap_rule, watch = parse_rules([
        {"id": "eng-budget", "scope": "team", "team": "eng", "condition": {"type": "budget", "threshold": 0.02},
         "action": {"type": "alert"}},
        {"id": "mini-watch", "scope": "org", "condition": {"type": "model", "operator": "in", "models": ["x"]},
         "action": {"type": "alert"}}])
    cap = Cap(cap_rule, Level(1, ScopeKind.team, "eng"), ("team", "eng"), MONTHLY, None, "spend", Decimal("0.02"))
    violations = (Violation(watch, Level(0, ScopeKind.org, None), "x"), Violation(cap_rule, cap.level, "over"))
    decision = Decision("allow", "gpt-4o-mini", "gpt-4o-mini", violations=violations)
    usage = (CapUsage(cap, 30_000_000, 1_000_000, 20_000_000, 0),)
    batch = [(_event(f"dev{i % 20:02d}"), Verdict(Outcome.allow, True, decision, usage=usage)) for i in range(100)]
    cfg = AlertsConfig.model_validate({"channels": {"ops": {"type": "slack", "url": "https://h.example/x"}},
                                       "default": ["ops"]})
    evaluator = Evaluator(cfg, Router(cfg), "http://gw/console/", 1, ZoneInfo("UTC"))
    evaluator.evaluate(batch)
    rounds = 500
    start = time.process_time()
    for _ in range(rounds):
        evaluator.evaluate(batch)
    return round((time.process_time() - start) / rounds / len(batch) * 1e6, 2)


def _event(subject: str) -> CallEvent:
    return CallEvent("e", int(time.time() * 1000), subject, "employee", "eng", None, None, "openai", "chat",
                     "/v1/chat/completions", True, "gpt-4o-mini", "gpt-4o-mini", False, 200, 25, 16, 0, 0, 100,
                     "response", "allow", None, None, 1.0, 1.0, False, None)


def wait_for(check: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def run(rate: float, seconds: float, rounds: int, out_dir: Path) -> Json:
    load_before = os.getloadavg()[0]
    slack = SlackStandIn()
    with tempfile.TemporaryDirectory(prefix="bench-alerts-") as tmp:
        work = Path(tmp)
        mock_port = free_port()
        mock = start_mock(mock_port, work)
        services = [mock]
        try:
            off_port, on_port = free_port(), free_port()
            services.append(start_gateway(off_port, gateway_config(mock_port, policy(None)), work, "gw-off"))
            alerts = {"channels": {"ops": {"type": "slack", "url": slack.url}}, "default": ["ops"],
                      "dedup_window_s": 3600}
            services.append(start_gateway(on_port, gateway_config(mock_port, policy(alerts)), work, "gw-on"))
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}
            targets = {"off": Target("off", off_port, "/openai/v1/chat/completions"),
                       "on": Target("on", on_port, "/openai/v1/chat/completions")}
            pools = {k: [request_bytes(t, body, {USER_HEADER: p}) for p in PEOPLE] for k, t in targets.items()}
            for k, t in targets.items():  # warm up
                uvloop.run(paced([t], [pools[k]], rate / 4, 1.0))
            results: dict[str, list[Json]] = {"off": [], "on": []}
            pids = {"off": services[1].proc.pid, "on": services[2].proc.pid}
            for i in range(rounds):
                for k in (("off", "on") if i % 2 == 0 else ("on", "off")):
                    cpu0 = cpu_seconds(pids[k])
                    [measured] = uvloop.run(paced([targets[k]], [pools[k]], rate, seconds))
                    measured["gateway_cpu_ms_per_call"] = round((cpu_seconds(pids[k]) - cpu0) * 1000 /
                                                                max(measured["calls"], 1), 4)
                    results[k].append(measured)
            # Paired: one paced stream at `rate`, alternate calls to each gateway (the same moments, the same
            # machine load for both).
            paired: dict[str, list[Json]] = {"off": [], "on": []}
            for _ in range(rounds):
                off_r, on_r = uvloop.run(paced([targets["off"], targets["on"]], [pools["off"], pools["on"]], rate,
                                               seconds))
                paired["off"].append(off_r)
                paired["on"].append(on_r)
            base = f"http://{HOST}:{on_port}"

            def alerts_now() -> list[Json]:
                _, body = admin_get(base, "/api/v1/alerts?limit=1000")
                listed: list[Json] = body.get("alerts", [])
                return listed

            sent_on = sum(r["calls"] for r in results["on"] + paired["on"]) + int(rate / 4 * 1.0)
            wait_for(lambda: sum(a["count"] for a in alerts_now() if a["kind"] == "rule"
                                 and a["fields"].get("Rule", "").startswith("mini-watch")) >= sent_on, 30)
            wait_for(lambda: all(a["state"] == "delivered" for a in alerts_now()), 30)
            listed = alerts_now()
            _, health = admin_get(base, "/healthz")
        finally:
            for s in reversed(services):
                stop_service(s)
    kinds = Counter(a["kind"] for a in listed)
    rule_alerts = [a for a in listed if a["kind"] == "rule" and a["fields"].get("Rule", "").startswith("mini-watch")]
    budget_rule = [a for a in listed if a["kind"] == "rule" and a["fields"].get("Rule", "").startswith("eng-budget")]
    titles = Counter(m.get("text", "") for m in slack.received)
    anomaly_scores = [score(generate(seed)) for seed in range(1, 11)]
    tp = sum(s.true_positives for s in anomaly_scores)
    fp = sum(s.false_positives for s in anomaly_scores)
    fn = sum(s.false_negatives for s in anomaly_scores)
    result: Json = {
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": _cpus(),
                    "load_avg_1m_before": round(load_before, 2), "load_avg_1m_after": round(os.getloadavg()[0], 2)},
        "rate_per_s": rate, "seconds_per_round": seconds, "rounds": rounds, "people": len(PEOPLE),
        "latency": {"alerts_off": merge(results["off"]), "alerts_on": merge(results["on"])},
        "paired": {"alerts_off": merge(paired["off"]), "alerts_on": merge(paired["on"])},
        "alerts": {
            "by_kind": dict(kinds), "rule_alerts": len(rule_alerts),
            "rule_firings_counted": sum(a["count"] for a in rule_alerts), "calls_sent_to_alerts_on": sent_on,
            "over_budget_rule_alerts": len(budget_rule),
            "over_budget_firings_counted": sum(a["count"] for a in budget_rule),
            "all_delivered": all(a["state"] == "delivered" for a in listed),
            "messages_received": len(slack.received),
            "duplicates_received": sum(n - 1 for n in titles.values() if n > 1),
            "health": health.get("alerts"),
        },
        "offer_ns_per_call": offer_cost_ns(),
        "evaluate_us_per_call": evaluate_cost_us(),
        "anomaly": {"seeds": 10, "team_days": sum(s.days_judged for s in anomaly_scores), "spikes": tp + fn,
                    "true_positives": tp, "false_positives": fp, "false_negatives": fn,
                    "precision": round(tp / (tp + fp), 4) if tp + fp else 1.0,
                    "recall": round(tp / (tp + fn), 4) if tp + fn else 1.0,
                    "alerts_on_quiet_days": sum(s.alerts_on_quiet_days for s in anomaly_scores)},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "alerts.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / "alerts.md").write_text(report(result))
    return result


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def report(r: Json) -> str:
    off, on = r["latency"]["alerts_off"], r["latency"]["alerts_on"]
    a, o, an = r["alerts"], r["offer_ns_per_call"], r["anomaly"]
    poff, pon = r["paired"]["alerts_off"], r["paired"]["alerts_on"]
    paired_rows = "\n".join(f"| {k} | {poff[k]} | {pon[k]} | {pon[k] - poff[k]:+.3f} |"
                            for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "max_ms"))
    rows = "\n".join(f"| {k} | {off[k]} | {on[k]} | {on[k] - off[k]:+.3f} |"
                     for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "max_ms", "gateway_cpu_ms_per_call",
                               "client_late_p99_ms"))
    return f"""# Alerts: evaluation off the request path

`python benchmarks/bench_alerts.py --rate {r['rate_per_s']:g} --seconds {r['seconds_per_round']:g} --rounds \
{r['rounds']}` on {r['machine']['cpus']} CPUs shared with other work (1-minute load average \
{r['machine']['load_avg_1m_before']} before, {r['machine']['load_avg_1m_after']} after), Python \
{r['machine']['python']}.

Two `tollhouse serve` gateways in front of the mock provider, one policy: a WARN rule firing on **every** call
and a $0.02 monthly team budget (thresholds 50/80/100 %). Alerts off: no channels. Alerts on: a Slack stand-in.
An open-loop client paces {r['rate_per_s']:g} calls/s from {r['people']} people, alternating {r['rounds']} rounds of
{r['seconds_per_round']:g} s per gateway (order swapped every round). Latency is per call, client side (median of
the rounds' percentiles); gateway CPU is the process's user+system time per call.

| | alerts off | alerts on | on - off |
|---|---|---|---|
{rows}
| calls | {off['calls']} | {on['calls']} | |
| achieved calls/s | {off['rate_per_s']} | {on['rate_per_s']} | |
| non-2xx / errors | {off['non_2xx']} / {off['errors']} | {on['non_2xx']} / {on['errors']} | |

Paired: one open-loop stream of {r['rate_per_s']:g} calls/s, alternate calls to each gateway (both at
{r['rate_per_s'] / 2:g} calls/s, at the same moments under the same load), {r['rounds']} rounds of
{r['seconds_per_round']:g} s:

| | alerts off | alerts on | on - off |
|---|---|---|---|
{paired_rows}

What the alerts-on gateway raised from {a['calls_sent_to_alerts_on']} calls (warm-up included) that all fired
`mini-watch`: {a['rule_alerts']} alerts for it (one per person per one-hour dedup window) counting
{a['rule_firings_counted']} firings; `eng-budget` (an alert rule: over its cap) {a['over_budget_rule_alerts']}
alerts counting {a['over_budget_firings_counted']} firings; by kind: {a['by_kind']} (budget: the 50/80/100 %
thresholds, once each); all delivered: {a['all_delivered']}; messages received by the Slack stand-in:
{a['messages_received']}, duplicates: {a['duplicates_received']}.

The request path's one alerting statement (`AlertQueue.offer`, in-process, best of 5 x 1M):
{o['alerts_off']} ns per call with alerts off, {o['alerts_on_rule_fires']} ns with alerts on and the rule firing.
The background evaluation of a call (two alert rules firing, a cap past its thresholds; in-process, on the
event loop every 0.1 s, never awaited by a call): {r['evaluate_us_per_call']} µs of CPU per call.

Anomaly detection on generated history ({an['seeds']} seeds, {an['team_days']} team-days judged, {an['spikes']}
known spikes, holiday weeks and quiet days): precision {an['precision']}, recall {an['recall']}
(TP {an['true_positives']}, FP {an['false_positives']}, FN {an['false_negatives']}); alerts on quiet days:
{an['alerts_on_quiet_days']}.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    result = run(args.rate, args.seconds, args.rounds, args.out)
    sys.stdout.write(report(result))


if __name__ == "__main__":
    main()
