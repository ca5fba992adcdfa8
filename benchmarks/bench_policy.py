#!/usr/bin/env python3
"""Policy decision microbenchmark: what does ``CompiledPolicy.evaluate`` cost per call?

Pure code, no server. Builds a synthetic organisation (10,000 people in 50 teams arranged as a tree
up to three deep, 200 projects) and rule sets of 10, 1,000 and 10,000 rules with a realistic mix of
scopes (org, every team, many individuals targeted by id, projects, "every individual") and kinds
(model allow / deny lists, provider lists, time windows, redirects, COST_CENTRE_REQUIRED, spend
budgets and usage caps, a few CONTENT_DLP), parsed with ``parse_rules`` and compiled with
``CompiledPolicy``. For each rule count it measures:

* compile time: ``parse_rules`` + ``CompiledPolicy(...)``, median of several repeats;
* cold decisions: the first ``evaluate`` of every distinct (subject, project), which includes
  resolving and caching that subject's applicable rules inside ``CompiledPolicy``;
* warm decisions: many ``evaluate`` calls (200k in full) over random subjects, models, providers
  and instants, every subject already cached;
* memory (tracemalloc): peak and retained bytes of parse + compile, and what the per-subject cache
  holds per subject (first call of a sample of subjects), extrapolated to every subject.

Each call is timed on its own with ``time.perf_counter_ns`` (the timer's own overhead is measured
and reported, not subtracted). Calls, subjects and instants are generated before timing starts, so
the timed loop does nothing but ``evaluate``. The garbage collector stays on, as in the gateway.

Writes ``policy-decision.json`` and ``policy-decision.md`` to ``--out`` and prints the table.

    python benchmarks/bench_policy.py [--quick] [--out benchmarks/results] [--rules 10,1000,10000]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from bench_gateway import _command_output, cpu_model
from tollhouse.config import DirectoryConfig, Person, Project, Team
from tollhouse.directory import Directory, Subject
from tollhouse.policy.engine import CallFacts, CompiledPolicy
from tollhouse.policy.rules import Rule, parse_rules

Json = dict[str, Any]

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
RESULT_NAME = "policy-decision"
TARGET_RULES = 1_000
TARGET_P50_US = 20.0
SEED = 20_260_101
ENGINE_CACHE_LIMIT = 200_000  # CompiledPolicy stops caching new subjects beyond this many

# --------------------------------------------------------------------------- workload constants

N_PEOPLE = 10_000
N_PROJECTS = 200
TOP_TEAMS = 5  # each has 3 children, each of those 2 children: 5 + 15 + 30 = 50 teams
MID_PER_TOP = 3
LEAF_PER_MID = 2

HOSTS: dict[str, str] = {
    "openai": "api.openai.com",
    "anthropic": "api.anthropic.com",
    "gemini": "generativelanguage.googleapis.com",
    "mistral": "api.mistral.ai",
}
MODELS: dict[str, tuple[str, ...]] = {
    "openai": ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3", "o4-mini", "gpt-4",
               "o1"),
    "anthropic": ("claude-sonnet-4-20250514", "claude-opus-4-20250514", "claude-3-5-haiku-latest",
                  "claude-3-opus-20240229"),
    "gemini": ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.0-flash", "gemini-1.5-pro"),
    "mistral": ("mistral-large-latest", "mistral-small-latest"),
}
PROVIDER_WEIGHTS: dict[str, float] = {"openai": 0.55, "anthropic": 0.30, "gemini": 0.12, "mistral": 0.03}
LEGACY_MODELS = ("gpt-4", "o1", "claude-3-opus-20240229", "gemini-1.5-pro")
ALL_MODELS = tuple(m for models in MODELS.values() for m in models)
APPROVED_MODELS = tuple(m for m in ALL_MODELS if m not in LEGACY_MODELS and not m.startswith("mistral"))
# model -> cheaper substitute (redirect rules)
SUBSTITUTES: dict[str, str] = {
    "gpt-4": "gpt-4o-mini",
    "o1": "o4-mini",
    "gpt-4.1": "gpt-4.1-mini",
    "o3": "o4-mini",
    "claude-3-opus-20240229": "claude-sonnet-4-20250514",
    "claude-opus-4-20250514": "claude-sonnet-4-20250514",
    "gemini-2.5-pro": "gemini-2.5-flash",
    "gemini-1.5-pro": "gemini-2.0-flash",
}
TIMEZONES = ("UTC", "Europe/London", "America/New_York", "Asia/Kolkata", "America/Los_Angeles")
DLP_DETECTORS = ("aws_access_key", "private_key", "openai_key", "github_token", "us_ssn", "email", "credit_card")

NO_MODEL_SHARE = 0.01  # calls without a model (e.g. an endpoint that names none)
PROMPT_SHARE = 0.10  # calls that carry prompt text (enterprise capture mode) for CONTENT_DLP
PROMPT_LEAK_SHARE = 0.05  # of those, the share with a secret a DLP detector matches
CALL_POOL = 4_000
INSTANT_POOL = 2_000
TIMER_SAMPLES = 200_000

# rule mix (after the fixed org / every-individual base): share of rules per scope, weights per type
SCOPE_SHARES = {"team": 0.15, "project": 0.20}  # the rest targets individuals by id
TYPE_WEIGHTS: dict[str, dict[str, int]] = {
    "team": {"MODEL_ALLOWLIST": 18, "MODEL_DENYLIST": 12, "redirect": 10, "PROVIDER_ALLOWLIST": 6,
             "PROVIDER_DENYLIST": 4, "time": 10, "budget": 20, "BUDGET_CROSS_PROVIDER": 5, "usage": 8,
             "COST_CENTRE_REQUIRED": 5, "CONTENT_DLP": 2},
    "project": {"budget": 35, "MODEL_ALLOWLIST": 15, "MODEL_DENYLIST": 10, "redirect": 8, "usage": 15,
                "COST_CENTRE_REQUIRED": 7, "PROVIDER_DENYLIST": 5, "time": 5},
    "individual": {"MODEL_DENYLIST": 22, "MODEL_ALLOWLIST": 15, "MONTHLY_SPEND_CAP_PER_SUBJECT": 25, "usage": 15,
                   "redirect": 10, "time": 6, "PROVIDER_DENYLIST": 5, "budget": 2},
}
ACTIONS = ("hard_stop", "soft_cap", "alert", "log")
ACTION_WEIGHTS = (35, 15, 35, 15)
DISABLED_SHARE = 0.02


@dataclass(frozen=True)
class Plan:
    """How much of each measurement to do."""

    warm_calls: int
    warm_warmup: int
    cold_subjects: int | None  # None: every distinct subject
    compile_repeats: int
    stats_sample: int
    memory_subjects: int  # subjects evaluated under tracemalloc to size the per-subject cache


FULL_PLAN = Plan(warm_calls=200_000, warm_warmup=5_000, cold_subjects=None, compile_repeats=5, stats_sample=3_000,
                 memory_subjects=4_000)
QUICK_PLAN = Plan(warm_calls=20_000, warm_warmup=1_000, cold_subjects=2_000, compile_repeats=1, stats_sample=1_000,
                  memory_subjects=1_000)


@dataclass(frozen=True)
class Org:
    config: DirectoryConfig
    directory: Directory
    team_ids: tuple[str, ...]
    depth: dict[str, int]
    project_ids: tuple[str, ...]
    person_ids: tuple[str, ...]
    subjects: tuple[Subject, ...]  # every distinct (person, project) a call can be attributed to
    variants: tuple[tuple[int, ...], ...]  # per person: indexes into subjects; [0] = no project header


Work = list[tuple[CallFacts, Subject, datetime.datetime]]


# --------------------------------------------------------------------------- the organisation


def build_org(rng: random.Random) -> Org:
    teams: list[Team] = []
    depth: dict[str, int] = {}
    for i in range(TOP_TEAMS):
        top = f"t{i}"
        # the last top-level tree has no cost centre of its own: COST_CENTRE_REQUIRED has work to do
        teams.append(Team(id=top, cost_centre=None if i == TOP_TEAMS - 1 else f"cc-{top}"))
        depth[top] = 1
        for j in range(MID_PER_TOP):
            mid = f"{top}.{j}"
            teams.append(Team(id=mid, parent=top, cost_centre=f"cc-{mid}" if rng.random() < 0.5 else None))
            depth[mid] = 2
            for k in range(LEAF_PER_MID):
                leaf = f"{mid}.{k}"
                teams.append(Team(id=leaf, parent=mid, cost_centre=f"cc-{leaf}" if rng.random() < 0.3 else None))
                depth[leaf] = 3
    team_ids = tuple(t.id for t in teams)
    below_top = [t for t in team_ids if depth[t] > 1]
    projects = [Project(id=f"p{i:03d}", team=rng.choice(below_top),
                        cost_centre=f"cc-p{i:03d}" if rng.random() < 0.6 else None) for i in range(N_PROJECTS)]
    project_ids = tuple(p.id for p in projects)
    people: list[Person] = []
    for i in range(N_PEOPLE):
        n_projects = rng.choices((0, 1, 2, 3), weights=(30, 40, 20, 10))[0]
        people.append(Person(
            id=f"u{i:05d}@example.com",
            team=rng.choice(below_top) if rng.random() < 0.97 else None,
            projects=tuple(rng.sample(project_ids, n_projects)),
            kind="contractor" if rng.random() < 0.10 else "employee",
            cost_centre="cc-personal" if rng.random() < 0.05 else None,
        ))
    config = DirectoryConfig(org="bench", teams=tuple(teams), projects=tuple(projects), people=tuple(people))
    directory = Directory(config)
    subjects: list[Subject] = []
    seen: dict[tuple[str, str | None], int] = {}
    variants: list[tuple[int, ...]] = []
    for person in config.people:
        mine: list[int] = []
        for project in (None, *person.projects):
            subject = directory.subject(person.id, project)
            key = (subject.id, subject.project)
            if key not in seen:
                seen[key] = len(subjects)
                subjects.append(subject)
            if seen[key] not in mine:
                mine.append(seen[key])
        variants.append(tuple(mine))
    return Org(config=config, directory=directory, team_ids=team_ids, depth=depth, project_ids=project_ids,
               person_ids=tuple(p.id for p in config.people), subjects=tuple(subjects), variants=tuple(variants))


# --------------------------------------------------------------------------- rules


def _action(rng: random.Random) -> Json:
    return {"type": rng.choices(ACTIONS, weights=ACTION_WEIGHTS)[0], "message": "benchmark rule"}


def _allowlist(rng: random.Random) -> list[str]:
    """An approved-model list: the org's approved set less a few, sometimes plus a legacy model."""
    models = [m for m in APPROVED_MODELS if rng.random() > 0.15]
    if rng.random() < 0.2:
        models.append(rng.choice(LEGACY_MODELS))
    return models or list(APPROVED_MODELS[:3])


def _condition(type_name: str, rng: random.Random) -> tuple[Json, Json]:
    """A (condition, action) pair for one rule of the given type."""
    if type_name == "MODEL_ALLOWLIST":
        return {"type": "MODEL_ALLOWLIST", "models": _allowlist(rng)}, _action(rng)
    if type_name == "MODEL_DENYLIST":
        return {"type": "MODEL_DENYLIST", "models": rng.sample(ALL_MODELS, rng.randint(1, 4))}, _action(rng)
    if type_name == "redirect":
        replaced = rng.sample(sorted(SUBSTITUTES), rng.randint(1, 2))
        return ({"type": "model", "operator": "in", "models": replaced},
                {"type": "redirect", "model": SUBSTITUTES[replaced[0]]})
    if type_name == "PROVIDER_ALLOWLIST":
        providers = ["openai", "anthropic", *(["gemini"] if rng.random() < 0.7 else [])]
        return {"type": "PROVIDER_ALLOWLIST", "providers": providers}, _action(rng)
    if type_name == "PROVIDER_DENYLIST":
        return {"type": "PROVIDER_DENYLIST", "providers": [rng.choice(["mistral", "api.mistral.ai", "gemini"])]}, \
            _action(rng)
    if type_name == "time":
        hours = rng.choice(([7, 20], "6-22", "08:00-19:30", "22:00-06:00"))
        op = "inside" if hours == "22:00-06:00" else "outside"
        window: Json = {"days": rng.choice(("mon-fri", [1, 2, 3, 4, 5, 6], "mon-sat")), "hours": hours,
                        "timezone": rng.choice(TIMEZONES)}
        return {"type": "time", "operator": op, "window": window}, _action(rng)
    if type_name == "budget":
        return ({"type": "budget", "threshold": rng.choice((100, 500, 2_000, 10_000)),
                 "window": rng.choice(("monthly", "monthly", "7d", "24h"))}, _action(rng))
    if type_name == "BUDGET_CROSS_PROVIDER":
        return ({"type": "BUDGET_CROSS_PROVIDER", "providers": ["openai", "anthropic", "gemini"],
                 "threshold": rng.choice((1_000, 5_000, 20_000))}, _action(rng))
    if type_name == "MONTHLY_SPEND_CAP_PER_SUBJECT":
        return ({"type": "MONTHLY_SPEND_CAP_PER_SUBJECT", "provider": rng.choice(("openai", "anthropic")),
                 "threshold": rng.choice((50, 100, 250))}, _action(rng))
    if type_name == "usage":
        return ({"type": "usage", "metric": rng.choice(("tokens_per_hour", "tokens_per_minute", "requests_per_minute",
                                                        "output_tokens_per_day")),
                 "threshold": rng.choice((60, 10_000, 200_000, 1_000_000))}, _action(rng))
    if type_name == "COST_CENTRE_REQUIRED":
        return {"type": "COST_CENTRE_REQUIRED"}, {"type": rng.choice(("alert", "log", "hard_stop"))}
    if type_name == "CONTENT_DLP":
        return ({"type": "CONTENT_DLP", "detectors": rng.sample(DLP_DETECTORS, rng.randint(1, 3)),
                 "patterns": [r"(?i)\bproject\s+nightingale\b"]}, {"type": "hard_stop"})
    raise ValueError(f"unknown rule type {type_name!r}")


def base_rules() -> list[Json]:
    """The ten rules every rule set starts with: org-wide policy and per-person defaults."""
    return [
        {"id": "org-approved-models", "scope": "org", "condition": {"type": "MODEL_ALLOWLIST",
                                                                    "models": list(APPROVED_MODELS)},
         "action": {"type": "hard_stop", "message": "use an approved model"}},
        {"id": "org-approved-providers", "scope": "org",
         "condition": {"type": "PROVIDER_ALLOWLIST", "providers": ["openai", "anthropic", "gemini"]},
         "action": {"type": "hard_stop"}},
        {"id": "org-business-hours", "scope": "org", "timezone": "Europe/London",
         "condition": {"type": "time", "operator": "outside", "window": {"days": "mon-fri", "hours": "6-22"}},
         "action": {"type": "alert"}},
        {"id": "org-legacy-redirect", "scope": "org",
         "condition": {"type": "model", "operator": "in", "models": ["gpt-4", "o1"]},
         "action": {"type": "redirect", "model": "gpt-4o-mini"}},
        {"id": "org-cost-centre", "scope": "org", "condition": {"type": "COST_CENTRE_REQUIRED"},
         "action": {"type": "alert"}},
        {"id": "org-monthly-budget", "scope": "org", "condition": {"type": "budget", "threshold": 250_000},
         "action": {"type": "soft_cap"}},
        {"id": "org-cross-provider", "scope": "org",
         "condition": {"type": "BUDGET_CROSS_PROVIDER", "providers": ["openai", "anthropic", "gemini"],
                       "threshold": 300_000, "window": "30d"}, "action": {"type": "hard_stop"}},
        {"id": "everyone-token-rate", "scope": "individual",
         "condition": {"type": "usage", "metric": "tokens_per_hour", "threshold": 500_000},
         "action": {"type": "hard_stop"}},
        {"id": "everyone-openai-monthly", "scope": "individual",
         "condition": {"type": "MONTHLY_SPEND_CAP_PER_SUBJECT", "provider": "openai", "threshold": 200},
         "action": {"type": "soft_cap"}},
        {"id": "org-dlp-secrets", "scope": "org",
         "condition": {"type": "CONTENT_DLP", "detectors": ["aws_access_key", "private_key", "openai_key"]},
         "action": {"type": "hard_stop"}},
    ]


def build_rules(n: int, org: Org, rng: random.Random) -> list[Json]:
    """`n` raw rules: the base set, then team / project / individual rules in SCOPE_SHARES proportions."""
    rules = base_rules()[:n]
    rest = n - len(rules)
    n_team = round(rest * SCOPE_SHARES["team"])
    n_project = round(rest * SCOPE_SHARES["project"])
    scopes = ["team"] * n_team + ["project"] * n_project + ["individual"] * (rest - n_team - n_project)
    for k, scope in enumerate(scopes):
        weights = TYPE_WEIGHTS[scope]
        type_name = rng.choices(list(weights), weights=list(weights.values()))[0]
        condition, action = _condition(type_name, rng)
        rule: Json = {"id": f"{scope}-{type_name.lower()}-{k:05d}", "scope": scope, "condition": condition,
                      "action": action}
        if scope == "team":  # round-robin, so every team has rules once there are enough
            rule["team"] = org.team_ids[k % len(org.team_ids)]
        elif scope == "project":
            rule["project"] = org.project_ids[(k - n_team) % len(org.project_ids)]
        else:
            rule["subject"] = rng.choice(org.person_ids)
        if rng.random() < DISABLED_SHARE:
            rule["enabled"] = False
        rules.append(rule)
    return rules


def rule_mix(rules: Sequence[Rule]) -> Json:
    return {
        "by_scope": dict(Counter(f"{r.scope.value}{'' if r.target else ' (every)'}" for r in rules).most_common()),
        "by_type": dict(Counter(r.type_name for r in rules).most_common()),
        "disabled": sum(1 for r in rules if not r.enabled),
        "distinct_individual_targets": len({r.target for r in rules if r.scope.value == "individual" and r.target}),
    }


# --------------------------------------------------------------------------- calls


def _prompt(rng: random.Random) -> str:
    words = ("summarise", "the", "quarterly", "report", "for", "our", "customers", "and", "draft", "an", "email",
             "about", "pricing", "changes", "in", "region", "with", "a", "friendly", "tone", "please")
    text = " ".join(rng.choice(words) for _ in range(rng.randint(20, 120)))
    if rng.random() < PROMPT_LEAK_SHARE:
        text += " here is the key AKIA" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16))
    return text


def build_calls(rng: random.Random) -> list[CallFacts]:
    providers = list(PROVIDER_WEIGHTS)
    weights = list(PROVIDER_WEIGHTS.values())
    calls: list[CallFacts] = []
    for _ in range(CALL_POOL):
        provider = rng.choices(providers, weights=weights)[0]
        model = None if rng.random() < NO_MODEL_SHARE else rng.choice(MODELS[provider])
        prompt = _prompt(rng) if rng.random() < PROMPT_SHARE else None
        # the engine reads what inspecting the prompt found (policy/dlp.py inspects it before evaluate)
        hits = None if prompt is None else frozenset({"org-dlp-secrets"} if "AKIA" in prompt else ())
        calls.append(CallFacts(provider=provider, provider_host=HOSTS[provider], model=model, content_hits=hits))
    return calls


def build_instants(rng: random.Random) -> list[datetime.datetime]:
    """Instants spread over one week (working hours more likely), timezone-aware UTC like the gateway's."""
    start = datetime.datetime(2026, 3, 2, tzinfo=datetime.UTC)  # a Monday
    out: list[datetime.datetime] = []
    for _ in range(INSTANT_POOL):
        day = rng.randrange(7) if rng.random() < 0.2 else rng.randrange(5)
        hour = rng.uniform(0, 24) if rng.random() < 0.3 else rng.uniform(8, 18)
        out.append(start + datetime.timedelta(days=day, hours=hour))
    return out


def build_work(n: int, org: Org, calls: Sequence[CallFacts], instants: Sequence[datetime.datetime],
               rng: random.Random) -> Work:
    """`n` (call, subject, instant) triples: a random person, usually with no project header."""
    work: Work = []
    for _ in range(n):
        variants = org.variants[rng.randrange(len(org.variants))]
        idx = variants[0] if len(variants) == 1 or rng.random() < 0.75 else rng.choice(variants)
        work.append((rng.choice(calls), org.subjects[idx], rng.choice(instants)))
    return work


# --------------------------------------------------------------------------- measurement


@dataclass(frozen=True)
class Timed:
    samples_ns: list[int]
    cpu_share: float  # process CPU time / wall time over the loop: below ~0.95 means other work preempted us
    gc_collections: tuple[int, int, int]  # collections per generation during the loop


def time_evaluate(policy: CompiledPolicy, work: Work) -> Timed:
    """Nanoseconds per `evaluate` call, each timed on its own."""
    clock = time.perf_counter_ns
    evaluate = policy.evaluate
    out = [0] * len(work)
    gc.collect()
    gc_before = [g["collections"] for g in gc.get_stats()]
    cpu0, wall0 = time.process_time_ns(), clock()
    for i, (call, subject, now) in enumerate(work):
        t0 = clock()
        evaluate(call, subject, now)
        out[i] = clock() - t0
    cpu, wall = time.process_time_ns() - cpu0, clock() - wall0
    gc_after = [g["collections"] for g in gc.get_stats()]
    collections = tuple(a - b for a, b in zip(gc_after, gc_before, strict=True))
    return Timed(out, cpu / max(1, wall), (collections[0], collections[1], collections[2]))


def timer_overhead_ns() -> float:
    clock = time.perf_counter_ns
    samples = [0] * TIMER_SAMPLES
    for i in range(TIMER_SAMPLES):
        t0 = clock()
        samples[i] = clock() - t0
    return float(statistics.median(samples))


def percentile(sorted_values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of an ascending sequence."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def summary_us(timed: Timed) -> Json:
    s = sorted(timed.samples_ns)
    return {
        "cpu_share": round(timed.cpu_share, 3),
        "gc_collections": list(timed.gc_collections),
        "n": len(s),
        "p50_us": percentile(s, 0.50) / 1e3,
        "p90_us": percentile(s, 0.90) / 1e3,
        "p99_us": percentile(s, 0.99) / 1e3,
        "p999_us": percentile(s, 0.999) / 1e3,
        "mean_us": statistics.fmean(s) / 1e3,
        "max_us": s[-1] / 1e3,
    }


def measure_compile(raw: list[Json], repeats: int) -> tuple[Json, CompiledPolicy]:
    parse_ns: list[int] = []
    compile_ns: list[int] = []
    policy: CompiledPolicy | None = None
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter_ns()
        rules = parse_rules(raw, "UTC")
        t1 = time.perf_counter_ns()
        policy = CompiledPolicy(rules)
        t2 = time.perf_counter_ns()
        parse_ns.append(t1 - t0)
        compile_ns.append(t2 - t1)
    assert policy is not None
    totals = [p + c for p, c in zip(parse_ns, compile_ns, strict=True)]
    return {
        "repeats": repeats,
        "parse_ms": statistics.median(parse_ns) / 1e6,
        "compile_ms": statistics.median(compile_ns) / 1e6,
        "total_ms": statistics.median(totals) / 1e6,
    }, policy


def measure_memory(raw: list[Json], cold: Work, all_subjects: int) -> Json:
    """tracemalloc: parse + compile (peak, retained), then the cache after a first call per subject."""
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        policy = CompiledPolicy(parse_rules(raw, "UTC"))
        compiled, peak = tracemalloc.get_traced_memory()
        for call, subject, now in cold:
            policy.evaluate(call, subject, now)
        gc.collect()
        cached, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    mib = 1024 * 1024
    per_subject = (cached - compiled) / max(1, len(cold))
    return {
        "compiled_peak_mb": (peak - base) / mib,
        "compiled_retained_mb": (compiled - base) / mib,
        "cache_measured_mb": (cached - compiled) / mib,
        "cache_measured_subjects": len(cold),
        "cache_kb_per_subject": per_subject / 1024,
        "cache_all_subjects_mb": per_subject * all_subjects / mib,  # linear extrapolation
        "all_subjects": all_subjects,
        "cache_at_engine_limit_mb": per_subject * ENGINE_CACHE_LIMIT / mib,
    }


def decision_stats(policy: CompiledPolicy, work: Work) -> Json:
    """Untimed: what the decisions were, and how many rules applied (from explain traces)."""
    actions: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    violations = 0
    for call, subject, now in work:
        decision = policy.evaluate(call, subject, now, explain=True)
        actions[decision.action] += 1
        violations += len(decision.violations)
        for line in decision.trace:
            lines[line.split(" ", 1)[0]] += 1
    n = max(1, len(work))
    return {
        "sample": len(work),
        "actions": {k: round(v / n, 4) for k, v in actions.most_common()},
        "mean_violations": violations / n,
        "mean_checks": (lines["ok"] + lines["VIOLATED"]) / n,
        "mean_caps": lines["cap"] / n,
        "mean_superseded": lines["superseded"] / n,
        "redirected": lines["redirect"] / n,
    }


def run_rule_count(n: int, org: Org, calls: list[CallFacts], instants: list[datetime.datetime], plan: Plan,
                   rng: random.Random) -> Json:
    phases: dict[str, float] = {}
    clock = time.perf_counter
    t = clock()
    raw = build_rules(n, org, rng)
    compile_stats, _ = measure_compile(raw, plan.compile_repeats if n < 10_000 else max(1, plan.compile_repeats - 2))

    # Cold: every distinct (subject, project) once, in random order, on a freshly compiled policy.
    order = list(range(len(org.subjects)))
    rng.shuffle(order)
    if plan.cold_subjects is not None:
        order = order[:plan.cold_subjects]
    cold_work: Work = [(rng.choice(calls), org.subjects[i], rng.choice(instants)) for i in order]
    policy = CompiledPolicy(parse_rules(raw, "UTC"))
    # The interpreter specialises evaluate's code on the first calls; do that on another policy object.
    warmup_policy = CompiledPolicy(policy.rules)
    for call, subject, now in cold_work[:200]:
        warmup_policy.evaluate(call, subject, now)
    del warmup_policy
    phases["compile"] = clock() - t
    t = clock()
    cold = time_evaluate(policy, cold_work)
    phases["cold"] = clock() - t
    t = clock()

    # Warm: random calls over subjects already cached (the cold pass cached them all).
    if plan.cold_subjects is not None:  # quick mode: cache the subjects the cold pass skipped, untimed
        for subject in org.subjects:
            policy.evaluate(calls[0], subject, instants[0])
    warm_work = build_work(plan.warm_calls + plan.warm_warmup, org, calls, instants, rng)
    time_evaluate(policy, warm_work[:plan.warm_warmup])
    warm = time_evaluate(policy, warm_work[plan.warm_warmup:])
    phases["warm"] = clock() - t
    t = clock()
    stats = decision_stats(policy, warm_work[:plan.stats_sample])
    phases["stats"] = clock() - t
    t = clock()
    memory = measure_memory(raw, cold_work[:plan.memory_subjects], len(org.subjects))
    phases["memory"] = clock() - t
    rules = parse_rules(raw, "UTC")
    return {
        "rules": n,
        "enabled_rules": sum(1 for r in rules if r.enabled),
        "rule_mix": rule_mix(rules),
        "compile": compile_stats,
        "warm": summary_us(warm),
        "cold": summary_us(cold),
        "memory": memory,
        "decisions": stats,
        "phase_s": {k: round(v, 2) for k, v in phases.items()},
    }


# --------------------------------------------------------------------------- machine & report


def machine_info() -> Json:
    repo = Path(__file__).resolve().parent.parent
    commit = _command_output(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    dirty = _command_output(["git", "-C", str(repo), "status", "--porcelain"])
    try:
        version: str | None = metadata.version("tollhouse")
    except metadata.PackageNotFoundError:
        version = None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "tollhouse": version,
        "git_commit": f"{commit}{'-dirty' if dirty else ''}" if commit else None,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


TABLE_HEAD = ("| rules | compile ms | warm p50 / p90 / p99 µs | warm mean µs | cold p50 / p99 µs | memory MB "
              "| cache KB / subject (MB for all) | rules checked + caps per call |")
TABLE_RULE = "|---:|---:|---:|---:|---:|---:|---:|---:|"


def table(results: Json) -> str:
    lines = [TABLE_HEAD, TABLE_RULE]
    for r in results["results"]:
        w, c, m, d = r["warm"], r["cold"], r["memory"], r["decisions"]
        lines.append(
            f"| {r['rules']:,} | {r['compile']['total_ms']:.1f} "
            f"| {w['p50_us']:.1f} / {w['p90_us']:.1f} / {w['p99_us']:.1f} | {w['mean_us']:.1f} "
            f"| {c['p50_us']:.1f} / {c['p99_us']:.1f} | {m['compiled_peak_mb']:.2f} "
            f"| {m['cache_kb_per_subject']:.2f} ({m['cache_all_subjects_mb']:.0f}) "
            f"| {d['mean_checks']:.1f} + {d['mean_caps']:.1f} |")
    return "\n".join(lines)


def _load(value: Sequence[float] | None) -> str:
    return "n/a" if value is None else " / ".join(f"{x:.2f}" for x in value)


def markdown(results: Json) -> str:
    m, wl, tgt = results["machine"], results["workload"], results["target"]
    verdict = "met" if tgt["met"] else "NOT met"
    shares = [r[phase]["cpu_share"] for r in results["results"] for phase in ("warm", "cold")]
    min_share, max_share = min(shares, default=0.0), max(shares, default=0.0)
    out = [
        "# Policy decision benchmark",
        "",
        table(results),
        "",
        f"- Target (issue): p50 ≤ {tgt['p50_us']:.0f} µs at {tgt['rules']:,} rules: **{verdict}** "
        f"(warm p50 {tgt['warm_p50_us']:.1f} µs, cold p50 {tgt['cold_p50_us']:.1f} µs).",
        f"- Run {m['date']} ({results['mode']}): tollhouse {m['tollhouse']} ({m['git_commit']}), "
        f"{m['python_implementation']} {m['python']}, kernel {m['kernel']}; {m['nproc']} CPUs ({m['cpu_model']}); "
        f"single thread, no server. Timer overhead (back-to-back `perf_counter_ns`) "
        f"{results['timer_overhead_ns']:.0f} ns per sample, included in the figures.",
        f"- Directory: {wl['people']:,} people in {wl['teams']} teams (a tree {wl['team_depth']} deep: "
        f"{TOP_TEAMS} top-level teams, {TOP_TEAMS * MID_PER_TOP} below them, "
        f"{TOP_TEAMS * MID_PER_TOP * LEAF_PER_MID} below those), {wl['projects']} projects; "
        f"{wl['subjects']:,} distinct (person, project) subjects (a person with several projects is a different "
        "cache entry per project header).",
        "- Rules: 10 org / every-individual base rules (approved models and providers, business hours, a legacy "
        "redirect, COST_CENTRE_REQUIRED, org budgets, per-person token rate and OpenAI monthly cap, CONTENT_DLP); "
        f"the rest {SCOPE_SHARES['team']:.0%} team-scoped (round-robin over every team), "
        f"{SCOPE_SHARES['project']:.0%} project-scoped, the remainder individuals targeted by id; types "
        "weighted per scope (model allow / deny lists, redirects, provider lists, time windows, budget / "
        "BUDGET_CROSS_PROVIDER / MONTHLY_SPEND_CAP_PER_SUBJECT / usage caps, COST_CENTRE_REQUIRED, a few "
        f"CONTENT_DLP); {DISABLED_SHARE:.0%} disabled. Exact mix per rule count in the JSON.",
        f"- Calls: providers {', '.join(f'{k} {v:.0%}' for k, v in PROVIDER_WEIGHTS.items())}, "
        f"{len(ALL_MODELS)} models (incl. legacy ones that are redirected or denied), {NO_MODEL_SHARE:.0%} without "
        f"a model, {PROMPT_SHARE:.0%} with prompt text (enterprise capture; {PROMPT_LEAK_SHARE:.0%} of those "
        "contain an AWS key), instants over one week in UTC.",
        f"- Warm: {results['plan']['warm_calls']:,} `evaluate` calls (after {results['plan']['warm_warmup']:,} "
        "untimed) over random subjects, every one already in CompiledPolicy's per-subject cache. Cold: the "
        "first `evaluate` of each distinct subject on a freshly compiled policy (resolving the applicable "
        "rules and caching them). Each call timed on its own with `perf_counter_ns`; GC on, as in the gateway.",
        f"- Contention: the timed loops got {min_share:.0%}-{max_share:.0%} of a CPU (process CPU time / wall "
        f"time; below ~95 % means other processes preempted the benchmark and inflated the tail); load average "
        f"{_load(m['load_average'])} before, {_load(results['load_average_after'])} after. GC collections during "
        "the warm loops (gen 0/1/2): "
        + ", ".join(f"{r['rules']:,} rules {'/'.join(map(str, r['warm']['gc_collections']))}"
                    for r in results["results"]) + ".",
        "- Compile = `parse_rules` + `CompiledPolicy(...)`, median of repeats. Memory = tracemalloc peak over "
        "parse + compile (the input dicts are not counted). Cache = what CompiledPolicy's per-subject cache "
        f"retains per subject, measured over the first call of {results['plan']['memory_subjects']:,} subjects; "
        f"MB for all = that times the {wl['subjects']:,} subjects (the engine caches up to "
        f"{ENGINE_CACHE_LIMIT:,}). 'rules checked + caps per call' = mean over a sample of explained decisions.",
    ]
    return "\n".join(out) + "\n"


def run_benchmark(plan: Plan, rule_counts: list[int], quick: bool, seed: int) -> Json:
    machine = machine_info()  # before the run: its load average shows what else the machine was doing
    rng = random.Random(seed)
    t0 = time.perf_counter()
    org = build_org(rng)
    calls = build_calls(rng)
    instants = build_instants(rng)
    print(f"directory: {len(org.person_ids):,} people, {len(org.team_ids)} teams, {len(org.project_ids)} projects, "
          f"{len(org.subjects):,} subjects ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    overhead = timer_overhead_ns()
    per_count: list[Json] = []
    for n in rule_counts:
        t1 = time.perf_counter()
        result = run_rule_count(n, org, calls, instants, plan, random.Random(seed + n))
        per_count.append(result)
        print(f"{n:>6,} rules: warm p50 {result['warm']['p50_us']:.1f} µs, cold p50 {result['cold']['p50_us']:.1f} µs "
              f"({time.perf_counter() - t1:.1f} s)", file=sys.stderr)
    at_target = next((r for r in per_count if r["rules"] == TARGET_RULES), None)
    return {
        "benchmark": RESULT_NAME,
        "mode": "quick" if quick else "full",
        "seed": seed,
        "machine": machine,
        "plan": {"warm_calls": plan.warm_calls, "warm_warmup": plan.warm_warmup,
                 "cold_subjects": plan.cold_subjects, "compile_repeats": plan.compile_repeats,
                 "memory_subjects": plan.memory_subjects},
        "workload": {
            "people": len(org.person_ids),
            "teams": len(org.team_ids),
            "team_depth": max(org.depth.values()),
            "projects": len(org.project_ids),
            "subjects": len(org.subjects),
            "models": list(ALL_MODELS),
            "provider_weights": PROVIDER_WEIGHTS,
            "no_model_share": NO_MODEL_SHARE,
            "prompt_share": PROMPT_SHARE,
            "prompt_leak_share": PROMPT_LEAK_SHARE,
        },
        "timer_overhead_ns": overhead,
        "target": {
            "rules": TARGET_RULES,
            "p50_us": TARGET_P50_US,
            "warm_p50_us": at_target["warm"]["p50_us"] if at_target else None,
            "cold_p50_us": at_target["cold"]["p50_us"] if at_target else None,
            "met": bool(at_target and at_target["warm"]["p50_us"] <= TARGET_P50_US),
        },
        "results": per_count,
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "load_average_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short smoke run (a few seconds)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"directory for {RESULT_NAME}.{{json,md}}")
    parser.add_argument("--rules", default="10,1000,10000", help="comma-separated rule counts")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.rules.split(",") if x.strip()]
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    results = run_benchmark(plan, counts, args.quick, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{RESULT_NAME}.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    md = markdown(results)
    (args.out / f"{RESULT_NAME}.md").write_text(md, encoding="utf-8")
    print(table(results))
    tgt = results["target"]
    if tgt["warm_p50_us"] is not None:
        print(f"\ntarget p50 <= {TARGET_P50_US:.0f} µs at {TARGET_RULES:,} rules: "
              f"{'met' if tgt['met'] else 'NOT met'} (warm p50 {tgt['warm_p50_us']:.1f} µs)")
    print(f"wrote {args.out / (RESULT_NAME + '.json')} and {args.out / (RESULT_NAME + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
