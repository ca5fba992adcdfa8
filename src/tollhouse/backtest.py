"""`tollhouse policy backtest` and POST /api/v1/policy/backtest: proposed rules replayed over the stored calls of
the last `days`, beside the policy in force (policy/backtest_report.py), read from the store a page at a time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from tollhouse.config import Settings
from tollhouse.directory import Directory
from tollhouse.events.history import settled_between, stream_calls
from tollhouse.events.store import Store
from tollhouse.gateway.directory_holder import DirectoryError, parse_directory
from tollhouse.gateway.policy_holder import RulesFileError, compile_rules, initial_policy
from tollhouse.ledger.local import HistoryRow
from tollhouse.policy.backtest import Setting
from tollhouse.policy.backtest_report import run_backtest
from tollhouse.policy.engine import CompiledPolicy
from tollhouse.policy.timewindow import zone
from tollhouse.pricing import PriceBook

DAY_MS = 86_400_000
MAX_DAYS = 366


def setting_of(settings: Settings, directory: Directory, prices: PriceBook) -> Setting:
    """What judging past calls reads from the gateway's configuration."""
    lc = settings.ledger
    return Setting(directory, prices,
                   {pid: urlsplit(p.upstream).hostname or "" for pid, p in settings.providers.items()},
                   {pid: settings.price_provider_id(pid) for pid in settings.providers},
                   lc.billing_day, zone(lc.timezone), settings.pricing.unpriced, settings.counters.fail_open)


def backtest_store(store: Store, proposed: CompiledPolicy, in_force: CompiledPolicy, setting: Setting, days: int,
                   now_ms: int) -> dict[str, Any]:
    """The report over the calls stored in the last `days` before `now_ms` (blocking: run it off the event loop).
    Raises StoreError when the store cannot be read."""
    since = now_ms - days * DAY_MS

    def history(scope: str, ids: Sequence[str], start: int, until: int, bucket: int) -> list[HistoryRow]:
        return settled_between(store, scope, ids, start, until, bucket)

    out = run_backtest(stream_calls(store, since, now_ms + 1), proposed, in_force, setting, since, now_ms, history)
    out["days"] = days
    out["in_force_version"] = in_force.version
    return out


def in_force_of(store: Store, settings: Settings) -> tuple[CompiledPolicy, Directory] | list[str]:
    """The policy in force and its directory, as a gateway on this store would take them (the store's latest
    versions, else the configuration's); or the problems that keep them from being read."""
    try:
        doc = store.latest_document("directory")
        cfg = parse_directory(doc.body) if doc is not None else settings.directory
        directory = Directory(cfg, doc.version if doc is not None else 0)
        p = settings.policy
        policy_doc = store.latest_document("policy")
        if policy_doc is None:
            return initial_policy(p.rules, p.rules_file, p.timezone, cfg).current, directory
        return compile_rules(list(policy_doc.body.get("rules", [])), p.timezone, cfg, policy_doc.version,
                             f"policy version {policy_doc.version}"), directory
    except (RulesFileError, DirectoryError) as exc:
        return list(exc.problems)


def render_report(r: dict[str, Any]) -> str:
    """The report as text, for a terminal."""
    out = [f"backtest over {r['days']} day(s), {r['from']} to {r['to']}: {r['calls']:,} calls "
           f"({r['judged']:,} judged; {r['refused_by_gateway']:,} refused by the gateway itself, not judged)",
           f"against the policy in force (version {r['in_force_version']}): {r['changed']:,} call(s) decided "
           "differently" + (f" ({', '.join(f'{k} {v:,}' for k, v in r['changes'].items())})" if r["changes"] else ""),
           "outcomes with these rules: " + ", ".join(f"{k} {v:,}" for k, v in r["outcomes"].items())
           + f"; cost blocked ${r['cost_usd_blocked']:,.2f}",
           "outcomes under the policy in force: " + ", ".join(f"{k} {v:,}" for k, v in r["in_force_outcomes"].items())
           + f"; cost blocked ${r['in_force_cost_usd_blocked']:,.2f}"]
    if r["cost_unknown"]:
        out.append(f"{r['cost_unknown']:,} call(s) refused in history would go through: their usage is unknown (never "
                   "forwarded) and counted as nothing")
    if r["not_evaluable"]:
        out.append(f"{r['not_evaluable']:,} call(s) not evaluable for content rules "
                   f"({', '.join(r['content_rules'])}): no prompt is stored; judged as if it matched nothing")
    shadow = r["shadow"]
    if shadow["rules"]:
        would = ", ".join(f"{k} {v:,}" for k, v in shadow["would"].items()) or "nothing"
        out.append(f"shadow rules ({', '.join(shadow['rules'])}) would change: {would}")
    out.append("")
    out.append(f"{'rule':24} {'mode':7} {'block':>9} {'warn':>9} {'redirect':>9} {'log':>9} {'cost blocked':>14} "
               f"{'subjects':>8} {'teams':>6}  first .. last")
    for t in r["rules"]:
        span = f"{t['first']} .. {t['last']}" if t["first"] else "-"
        out.append(f"{t['id'][:24]:24} {t['mode']:7} {t['would_block']:>9,} {t['would_warn']:>9,} "
                   f"{t['would_redirect']:>9,} {t['would_log']:>9,} {'$' + format(t['cost_usd_blocked'], ',.2f'):>14} "
                   f"{t['subjects_count']:>8,} {t['teams_count']:>6,}  {span}"
                   + (f"  (not evaluable: {t['not_evaluable']:,})" if t["not_evaluable"] else ""))
    return "\n".join(out)
