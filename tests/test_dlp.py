"""CONTENT_DLP inspection: bounded (a time budget, off the event loop), run in every capture mode, and never
keeping what it caught (enterprise captures are redacted; telemetry keeps nothing)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
import pytest

from conftest import Gateway, Mock, upstreams
from test_gateway_sdks import oai
from tollhouse.config import DirectoryConfig, Person
from tollhouse.directory import Directory
from tollhouse.policy.dlp import MAX_SPANS, Hit, Inspection, Span, inspect, redact, scan
from tollhouse.policy.engine import CallFacts, CompiledPolicy
from tollhouse.policy.rules import Rule, parse_rules

AWS_KEY = "AKIAABCDEFGHIJKLMNOP"
EMAIL = "jane.doe@example.com"
EVIL = "(a+)+$"  # catastrophic backtracking on a long run of a's that does not end the text
NOW = datetime(2024, 6, 5, 12, 0, tzinfo=UTC)
DIRECTORY = Directory(DirectoryConfig(org="acme", people=(Person(id="alice"),)))


def dlp(rid: str, severity: str = "BLOCK", **cond: Any) -> dict[str, Any]:
    extra = {"fail_open": cond.pop("fail_open")} if "fail_open" in cond else {}
    return {"id": rid, "scope": "org", "severity": severity, "condition": {"type": "CONTENT_DLP", **cond}, **extra}


def rules(*raw: dict[str, Any]) -> tuple[Rule, ...]:
    return parse_rules(list(raw))


# --- inspection -------------------------------------------------------------------------------------------------

def test_an_inspection_names_rules_and_detectors_but_holds_none_of_the_text() -> None:
    prompt = f"ask {EMAIL} for key {AWS_KEY}, re PROJECT-X42"
    found = scan(prompt, rules(dlp("secrets", detectors=["aws_access_key", "private_key"]),
                               dlp("pii", "WARN", detectors=["email"], patterns=[r"PROJECT-X\d+"])), 5.0)
    assert found.hits == (Hit("secrets", "aws_access_key"), Hit("pii", "patterns[0]"), Hit("pii", "email"))
    assert found.rule_ids == {"secrets", "pii"} and not found.timed_out and found.spans_complete
    assert sorted(found.spans) == [Span(4, 24, "email"), Span(33, 53, "aws_access_key"), Span(58, 69, "pii")]
    assert AWS_KEY not in repr(found) and EMAIL not in repr(found) and "X42" not in repr(found)
    assert redact(prompt, found) == "ask [redacted:email] for key [redacted:aws_access_key], re [redacted:pii]"


def test_overlapping_matches_are_redacted_as_one() -> None:
    prompt = "token sk-abcdefghijklmnopqrstuvwxyz0123 end"
    found = scan(prompt, rules(dlp("keys", detectors=["openai_key"], patterns=["sk-[a-z]+"])), 5.0)
    assert redact(prompt, found) == "token [redacted:keys] end"


def test_a_clean_prompt_is_kept_whole_and_hits_nothing() -> None:
    found = scan("hello there", rules(dlp("secrets", detectors=["aws_access_key"])), 5.0)
    assert found.hits == () and redact("hello there", found) == "hello there"


def test_a_pathological_pattern_is_cut_off_at_the_budget() -> None:
    prompt = "a" * 20_000 + "b"
    started = time.monotonic()
    found = scan(prompt, rules(dlp("evil", patterns=[EVIL]), dlp("after", detectors=["email"])), 0.05)
    assert time.monotonic() - started < 1.0
    assert found.timed_out and found.unchecked == {"evil", "after"} and found.hits == ()
    assert redact(prompt, found) == "[redacted:content inspection exceeded limits.dlp_time_ms]"


def test_inspect_runs_in_a_worker_thread_and_never_holds_up_the_event_loop() -> None:
    async def main() -> tuple[Inspection, float, int]:
        done = asyncio.Event()
        worst, turns = 0.0, 0

        async def other_work() -> None:  # everything else the loop does meanwhile: one turn after another
            nonlocal worst, turns
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0)
                now = time.perf_counter()
                worst, turns, last = max(worst, now - last), turns + 1, now

        other = asyncio.create_task(other_work())
        found = await inspect("a" * 200_000 + "b", rules(dlp("evil", patterns=[EVIL])), 0.5)
        done.set()
        await other
        return found, worst, turns

    found, worst, turns = asyncio.run(main())
    assert found.timed_out and found.unchecked == {"evil"}
    assert turns > 100 and worst < 0.1, (turns, worst)


def test_a_match_found_before_the_budget_ran_out_still_counts() -> None:
    prompt = AWS_KEY + " " + "a" * 20_000 + "b"
    found = scan(prompt, rules(dlp("keys", patterns=[r"AKIA[0-9A-Z]{16}", EVIL])), 0.05)
    assert found.timed_out and found.rule_ids == {"keys"} and found.unchecked == frozenset()
    assert AWS_KEY not in redact(prompt, found)  # the spans are not all known: nothing is kept


def test_more_matches_than_can_be_kept_withholds_the_whole_prompt() -> None:
    prompt = " ".join(["123-45-6789"] * (MAX_SPANS + 1))
    found = scan(prompt, rules(dlp("ssn", detectors=["us_ssn"])), 5.0)
    assert found.rule_ids == {"ssn"} and not found.timed_out and not found.spans_complete
    assert redact(prompt, found) == "[redacted:too many matches]"


def test_without_spans_a_rule_stops_at_its_first_match_and_nothing_is_redactable() -> None:
    prompt = f"{AWS_KEY} and {EMAIL}"
    found = scan(prompt, rules(dlp("r", detectors=["aws_access_key", "email"])), 5.0, spans=False)
    assert found.hits == (Hit("r", "aws_access_key"),) and found.spans == ()
    assert AWS_KEY not in redact(prompt, found)


# --- the engine reads the inspection's results ------------------------------------------------------------------

def _judge(policy: CompiledPolicy, hits: frozenset[str] | None, unchecked: frozenset[str] = frozenset()) -> Any:
    call = CallFacts("openai", "api.openai.com", "gpt-4o", content_hits=hits, content_unchecked=unchecked)
    return policy.evaluate(call, DIRECTORY.subject("alice"), NOW)


def test_the_engine_judges_content_on_the_inspection_results_and_remembers_them_apart() -> None:
    policy = CompiledPolicy(rules(dlp("secrets", detectors=["aws_access_key"]), dlp("pii", "WARN", detectors=["email"]),
                                  dlp("loose", detectors=["us_ssn"], fail_open=True)))
    assert [r.id for r in policy.content_rules(DIRECTORY.subject("alice"))] == ["secrets", "pii", "loose"]
    # the same subject, provider, model and minute: only the content results differ, each is judged on its own
    sequence = [(frozenset({"secrets"}), frozenset(), "block", "secrets"),
                (None, frozenset(), "allow", None),
                (frozenset({"pii"}), frozenset(), "warn", "pii"),
                (frozenset(), frozenset(), "allow", None),
                (frozenset({"secrets"}), frozenset(), "block", "secrets"),
                (frozenset(), frozenset({"pii", "loose"}), "allow", None),  # not BLOCK / fail_open: let through
                (frozenset(), frozenset({"secrets", "pii"}), "block", "secrets")]
    for hits, unchecked, action, rule_id in sequence * 2:  # twice: the second time from the memo
        decision = _judge(policy, hits, unchecked)
        assert (decision.action, decision.rule_id) == (action, rule_id), (hits, unchecked)
    timed_out = _judge(policy, frozenset(), frozenset({"secrets"}))
    assert timed_out.top is not None and "limits.dlp_time_ms" in timed_out.top.reason


def test_no_content_rules_means_nothing_to_inspect() -> None:
    policy = CompiledPolicy(rules({"id": "m", "scope": "org", "severity": "BLOCK",
                                   "condition": {"type": "MODEL_DENYLIST", "models": ["o1"]}}))
    assert policy.content_rules(DIRECTORY.subject("alice")) == ()


# --- through the gateway ----------------------------------------------------------------------------------------

def _gateway(factory: Any, mock: Mock, raw: list[dict[str, Any]], data_dir: Path | None = None,
             **extra: Any) -> Gateway:
    gw: Gateway = factory({"identity": {"trust_user_header": True}, "providers": upstreams(mock.url),
                           "enforcement": "on", "policy": {"rules": raw}, **extra}, data_dir)
    return gw


def _chat(gw: Gateway, content: str, timeout: float = 30) -> tuple[int, bytes]:
    body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 3,
                       "messages": [{"role": "user", "content": content}]}).encode()
    req = urllib.request.Request(gw.url + "/openai/v1/chat/completions", data=body, method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": "Bearer sk-client",
                                          "X-Tollhouse-User": "alice"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_a_pathological_pattern_on_a_huge_prompt_does_not_stall_other_clients(
        mock: Mock, gateway_factory: Any) -> None:
    """Inspection runs in a worker thread: while a 24 MB prompt is matched against a catastrophic pattern (and the
    email detector) for the whole budget, other clients' calls go through at once. (Telemetry mode, the default:
    the inspection runs there too.)"""
    gw = _gateway(gateway_factory, mock, [dlp("evil", patterns=[EVIL], detectors=["email"])],
                  limits={"dlp_time_ms": 3000})
    assert _chat(gw, "warm up")[0] == 200
    bad: list[tuple[int, bytes]] = []
    bad_call = threading.Thread(target=lambda: bad.append(_chat(gw, "a" * 24_000_000 + "b", timeout=60)))
    bad_call.start()
    latencies: list[float] = []
    while bad_call.is_alive():
        started = time.perf_counter()
        status, _ = _chat(gw, "hello", timeout=10)
        latencies.append(time.perf_counter() - started)
        assert status == 200
    bad_call.join()
    [(status, body)] = bad
    assert status == 403 and b"limits.dlp_time_ms" in body  # it ran for the whole budget, then failed closed
    assert len(latencies) >= 5, latencies  # calls were made all the while the bad one was inspected
    assert max(latencies) < 1.0, latencies
    bad_event = next(e for e in gw.events() if e["decision"] == "block")
    # regex counts its timeout in the process's CPU time: with other threads busy it ends sooner in wall time
    assert bad_event["rule_id"] == "evil" and bad_event["latency_ms"] >= 500


def test_an_inspection_over_budget_fails_closed_unless_the_rule_is_fail_open(
        mock: Mock, gateway_factory: Any) -> None:
    prompt = "a" * 50_000 + "b"
    closed = _gateway(gateway_factory, mock, [dlp("evil", patterns=[EVIL])], limits={"dlp_time_ms": 20})
    with pytest.raises(openai.PermissionDeniedError) as exc:
        oai(closed).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": prompt}])
    assert "content inspection exceeded limits.dlp_time_ms" in str(exc.value)
    assert mock.stats.total == 0 and closed.events()[0]["rule_id"] == "evil"
    opened = _gateway(gateway_factory, mock, [dlp("evil", patterns=[EVIL], fail_open=True)],
                      limits={"dlp_time_ms": 20})
    answer = oai(opened).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": prompt}])
    assert answer.choices and mock.stats.total == 1


def test_observe_mode_records_what_dlp_would_do_without_refusing(mock: Mock, gateway_factory: Any) -> None:
    gw = _gateway(gateway_factory, mock, [dlp("secrets", detectors=["aws_access_key"])], enforcement="off")
    assert _chat(gw, f"use {AWS_KEY}")[0] == 200
    [event] = gw.events()
    assert (event["decision"], event["would"], event["rule_id"]) == ("allow", "block", "secrets")


def test_what_dlp_caught_is_never_stored(mock: Mock, gateway_factory: Any, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    """Enterprise capture: a blocked prompt and a warned one are stored redacted; neither the event API, nor the
    store's files on disk, nor the logs hold the secret."""
    caplog.set_level(logging.DEBUG)
    data_dir = tmp_path / "gw"
    gw = _gateway(gateway_factory, mock, [dlp("secrets", detectors=["aws_access_key"]),
                                          dlp("pii", "WARN", detectors=["email"], patterns=[r"PROJECT-X\d+"])],
                  data_dir, capture_mode="enterprise")
    status, body = _chat(gw, f"deploy with {AWS_KEY} please")
    assert status == 403 and AWS_KEY.encode() not in body
    assert _chat(gw, f"ask {EMAIL} about PROJECT-X42")[0] == 200
    warned, blocked = gw.events()
    status, raw, _ = gw.get(f"/api/v1/events/{blocked['id']}")
    assert status == 200 and AWS_KEY.encode() not in raw
    assert json.loads(raw)["event"]["prompt"] == "deploy with [redacted:aws_access_key] please"
    assert json.loads(gw.get(f"/api/v1/events/{warned['id']}")[1])["event"]["prompt"] == \
        "ask [redacted:email] about [redacted:pii]"
    everything = gw.get("/api/v1/events?include=content")[1]
    assert AWS_KEY.encode() not in everything and EMAIL.encode() not in everything
    gw.stop()
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        assert AWS_KEY.encode() not in data and EMAIL.encode() not in data and b"X42" not in data, path
    assert AWS_KEY not in caplog.text and EMAIL not in caplog.text
    assert "secrets" in caplog.text  # the rule that matched is logged, by name


def test_telemetry_mode_inspects_but_stores_nothing(mock: Mock, gateway_factory: Any) -> None:
    gw = _gateway(gateway_factory, mock, [dlp("pii", "WARN", detectors=["email"])])
    assert _chat(gw, f"write to {EMAIL}")[0] == 200
    [event] = json.loads(gw.get("/api/v1/events?include=content")[1])["events"]
    assert event["rule_id"] == "pii" and event["decision"] == "warn" and event["prompt"] is None


@pytest.mark.parametrize("stream", [False, True])
def test_what_dlp_matches_in_the_answer_is_redacted_too(mock: Mock, gateway_factory: Any, stream: bool) -> None:
    """Enterprise capture keeps the answer as well: what the caller's content rules match in it is redacted before
    it is stored, the same as in the prompt. (The mock answers lorem ipsum; the rule watches for 'ipsum'.)"""
    gw = _gateway(gateway_factory, mock, [dlp("codeword", "INFO", patterns=["ipsum"])], capture_mode="enterprise")
    client = oai(gw)
    if stream:
        chunks = client.chat.completions.create(model="gpt-4o-mini", max_tokens=4, stream=True,
                                                messages=[{"role": "user", "content": "hello"}])
        answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        reply = client.chat.completions.create(model="gpt-4o-mini", max_tokens=4,
                                               messages=[{"role": "user", "content": "hello"}])
        answer = reply.choices[0].message.content or ""
    assert "ipsum" in answer  # the caller gets the answer as the provider gave it
    [event] = json.loads(gw.get("/api/v1/events?include=content")[1])["events"]
    assert event["prompt"] == "hello"
    assert "ipsum" not in event["response"] and "[redacted:codeword]" in event["response"]
    assert event["response"].startswith("lorem")


def test_a_stream_whose_answer_takes_long_to_inspect_is_listed_by_a_read_right_after_it_ends(
        mock: Mock, gateway_factory: Any) -> None:
    """The caller's SDK stops at the stream's last event; the gateway then still inspects the captured answer
    (here for the whole budget: a pattern that backtracks on 5,000 words) before it records the call. A read of
    events the caller makes right away waits for the call rather than answer without it."""
    gw = _gateway(gateway_factory, mock, [dlp("slow", "INFO", patterns=[r"(\w+\s?)+\d"])],
                  capture_mode="enterprise", limits={"dlp_time_ms": 400})
    chunks = oai(gw).chat.completions.create(model="gpt-4o-mini", max_tokens=5000, stream=True,
                                             messages=[{"role": "user", "content": "hello"}],
                                             extra_headers={"X-Mock-Output-Tokens": "5000"})
    assert len("".join(c.choices[0].delta.content or "" for c in chunks if c.choices).split()) == 5000
    [event] = json.loads(gw.get("/api/v1/events?include=content")[1])["events"]
    assert event["stream"] and event["output_tokens"] == 5000 and not event["client_disconnected"]
    assert event["response"] == "[redacted:content inspection exceeded limits.dlp_time_ms]"
