"""Money does not leak past a cap: end to end, a real gateway over the real mock provider.

Alice has a personal hard cap of $0.01 a month. gpt-4o-mini and gpt-4.1-mini cost $0.05 per million output
tokens here (50 nano-dollars a token) and nothing for input, so a call's worst case is exactly its most
output tokens times 50 n$: gpt-4o-mini's 16,384 (its real maximum output) is $0.0008192.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anthropic
import openai
import pytest

from conftest import Gateway, Mock, free_port, upstreams

NUSD = 1_000_000_000  # nano-dollars per dollar
CAP_NUSD = 10_000_000  # $0.01
PER_TOKEN_NUSD = 50  # output_mtok 0.05
MINI_MAX = 16_384  # gpt-4o-mini's maximum output (model_limits.py)
WIDE_MAX = 32_768  # gpt-4.1-mini's
CAP = {"id": "personal", "scope": "individual", "condition": {"type": "budget", "threshold": 0.01,
                                                              "window": "monthly"},
       "action": {"type": "hard_stop"}}
PRICES = {"overrides": [
    {"provider": "openai", "model": "gpt-4o-mini", "input_mtok": 0, "output_mtok": 0.05},
    {"provider": "openai", "model": "gpt-4.1-mini", "input_mtok": 0, "output_mtok": 0.05},
    {"provider": "openai", "model": "gpt-image-1", "input_mtok": 0, "output_mtok": 0.05},
    {"provider": "anthropic", "model": "claude-3-5-haiku-latest", "input_mtok": 0, "output_mtok": 0.05},
    {"provider": "google", "model": "gemini-2.0-flash", "input_mtok": 0, "output_mtok": 0.05},
]}
DIRECTORY = {"teams": [{"id": "platform"}], "projects": [{"id": "checkout", "team": "platform"}],
             "people": [{"id": "alice", "team": "platform"}]}
ALICE = {"X-Tollhouse-User": "alice"}
CHAT = {"model": "gpt-4o-mini", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def _config(url: str, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"identity": {"trust_user_header": True}, "providers": upstreams(url),
                           "enforcement": "on", "directory": DIRECTORY, "pricing": PRICES,
                           "policy": {"rules": [CAP]}}
    cfg.update(extra)
    return cfg


def _raw(gw: Gateway, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
         ) -> tuple[int, bytes, dict[str, str]]:
    """One request with the path sent exactly as written (no client normalises it)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def _oai(gw: Gateway, key: str = "sk-alice", **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/openai/v1", api_key=key, max_retries=0,
                         default_headers={**ALICE, **headers})


def _events(gw: Gateway, n: int) -> list[dict[str, Any]]:
    """The gateway's events once there are (at least) n: abandoned calls are recorded when the gateway sees
    the client gone, which the test cannot wait on directly."""
    deadline = time.monotonic() + 15
    while True:
        events = gw.events(500)
        if len(events) >= n or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


def _spend_nusd(gw: Gateway) -> int:
    status, body, _ = gw.get("/api/v1/spend?scope=person&id=alice&window=month")
    assert status == 200, body
    return round(json.loads(body)["spend_usd"] * NUSD)


def _remaining(headers: dict[str, str]) -> str:
    """X-Tollhouse-Budget-Remaining: dollars to the micro-dollar."""
    return headers["x-tollhouse-budget-remaining"]


def _usd6(nusd: int) -> str:
    return f"{nusd / NUSD:.6f}"


def _audit_blocks(gw: Gateway) -> list[dict[str, Any]]:
    status, body, _ = gw.get("/api/v1/audit")
    assert status == 200, body
    return [e["data"] for e in json.loads(body)["entries"] if e["kind"] == "call.blocked"]


@contextmanager
def _held(gw: Gateway) -> Iterator[list[http.client.HTTPConnection]]:
    """Connections whose streamed answers stay open (the mock stalls after three chunks) until the end."""
    conns: list[http.client.HTTPConnection] = []
    try:
        yield conns
    finally:
        for conn in conns:
            conn.close()


def _stall(gw: Gateway, held: list[http.client.HTTPConnection], body: dict[str, Any]
           ) -> tuple[int, dict[str, str]]:
    """Start a streamed call the mock never finishes: an admitted one stays in flight, its worst case reserved."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    held.append(conn)
    conn.request("POST", "/openai/v1/chat/completions", body=json.dumps({**body, "stream": True}).encode(),
                 headers={"Content-Type": "application/json", "X-Mock-Fault": "stall-stream", **ALICE})
    resp = conn.getresponse()
    if resp.status != 200:
        resp.read()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}


# 1-2. The worst case: n choices, the model's real maximum output, max_tokens however it is written


@pytest.mark.parametrize("n", [1, 8, "8", 8.0])
def test_n_choices_are_reserved_as_n_completions(mock: Mock, gateway_factory: Any, n: Any) -> None:
    gw: Gateway = gateway_factory(_config(mock.url))
    worst = MINI_MAX * PER_TOKEN_NUSD * int(n)  # no max_tokens: the model's maximum, n times
    expected = CAP_NUSD // worst  # n=1: 12 calls in flight; n=8: 1
    assert expected == {1: 12, 8: 1}[int(n)]
    body = {"model": "gpt-4o-mini", "n": n, "messages": [{"role": "user", "content": "hi"}]}
    with _held(gw) as held:
        statuses = []
        for i in range(expected + 2):
            status, headers = _stall(gw, held, body)
            statuses.append(status)
            if status == 200:
                assert _remaining(headers) == _usd6(CAP_NUSD - (i + 1) * worst)
        assert statuses == [200] * expected + [403, 403]
        assert mock.stats.by_path.get("/v1/chat/completions") == expected  # the refused never left
    events = _events(gw, expected + 2)
    assert len(events) == expected + 2
    blocked = [e for e in events if e["decision"] == "block"]
    assert len(blocked) == 2 and all(e["rule_id"] == "personal" and e["status"] == 403 for e in blocked)
    spent = _spend_nusd(gw)
    assert spent == round(sum(e["cost_usd"] or 0 for e in events) * NUSD)
    assert 0 < spent <= CAP_NUSD


def test_no_max_tokens_reserves_the_models_real_maximum(mock: Mock, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory(_config(mock.url))
    raw = _oai(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    # 16,384 tokens reserved, not the 4,096 default: $0.01 - $0.0008192
    assert raw.http_response.status_code == 200
    assert _remaining(dict(raw.headers)) == _usd6(CAP_NUSD - MINI_MAX * PER_TOKEN_NUSD)
    assert mock.stats.by_path["/v1/chat/completions"] == 1
    for value in ("20000", 20000.0, " 20000 "):
        for model, model_max in (("gpt-4o-mini", MINI_MAX), ("gpt-4.1-mini", WIDE_MAX)):
            used = _spend_nusd(gw)
            status, _, headers = gw.request("POST", "/openai/v1/chat/completions", {
                "model": model, "max_tokens": value, "messages": [{"role": "user", "content": "hi"}]},
                token="sk-alice", headers=ALICE)
            # The mock, like a strict server, refuses the odd number (400, nothing spent), but what was
            # reserved was 20,000 tokens capped at the model's maximum.
            assert status == 400
            want = CAP_NUSD - used - min(20_000, model_max) * PER_TOKEN_NUSD
            assert _remaining(headers) == _usd6(want), (value, model)
    # Gemini: candidateCount is choices too (gemini-2.0-flash: at most 8,192 tokens each)
    used = _spend_nusd(gw)
    status, _, headers = _raw(gw, "POST", "/gemini/v1beta/models/gemini-2.0-flash:generateContent", {
        "contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"candidateCount": 8}},
        {**ALICE, "x-goog-api-key": "sk-alice"})
    assert status == 200 and _remaining(headers) == _usd6(CAP_NUSD - used - 8 * 8192 * PER_TOKEN_NUSD)
    events = _events(gw, 8)
    assert [e["status"] for e in events].count(400) == 6
    assert _spend_nusd(gw) == 2 * 16 * PER_TOKEN_NUSD  # only two calls produced anything: 16 tokens each


# 3. Background calls: the answer tells no usage, so they are settled at the worst case reserved


def test_background_responses_are_settled_at_the_reserved_worst_case(mock: Mock, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory(_config(mock.url))
    client = _oai(gw)
    worst = MINI_MAX * PER_TOKEN_NUSD
    admitted = 0
    refused = 0
    for _ in range(40):
        try:
            resp = client.responses.create(model="gpt-4o-mini", input="write a novel", background=True)
        except openai.PermissionDeniedError as exc:
            assert exc.status_code == 403 and "personal" in exc.message
            refused += 1
            continue
        assert resp.status == "queued" and resp.usage is None  # what OpenAI answers: usage only when polled
        admitted += 1
    assert admitted == CAP_NUSD // worst == 12 and refused == 28
    assert mock.stats.by_path["/v1/responses"] == 12
    events = _events(gw, 40)
    settled = [e for e in events if e["status"] == 200]
    assert len(settled) == 12
    assert all(e["usage_source"] == "reserved" and round(e["cost_usd"] * NUSD) == worst for e in settled)
    assert _spend_nusd(gw) == 12 * worst <= CAP_NUSD


# 4. Governed endpoints are judged; free ones pass


def _exhaust(gw: Gateway) -> None:
    """Spend alice's $0.01 to the last nano-dollar: 20 background calls of at most 10,000 tokens ($0.0005)."""
    client = _oai(gw)
    for _ in range(20):
        client.responses.create(model="gpt-4o-mini", input="x", background=True, max_output_tokens=10_000)
    assert _spend_nusd(gw) == CAP_NUSD
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=1, messages=[{"role": "user", "content": "x"}])


def test_governed_endpoints_are_refused_once_the_budget_is_spent(mock: Mock, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory(_config(mock.url))
    _exhaust(gw)
    reached = mock.stats.total
    governed = [
        ("/openai/v1/images/generations", {"model": "gpt-image-1", "prompt": "a cat", "n": 1}),
        ("/openai/v1/batches", {"input_file_id": "file-1", "endpoint": "/v1/chat/completions",
                                "completion_window": "24h"}),
        ("/anthropic/v1/messages/batches", {"requests": [{"custom_id": "a", "params": {
            "model": "claude-3-5-haiku-latest", "max_tokens": 100, "messages": [{"role": "user", "content": "x"}]}}]}),
        ("/gemini/v1beta/models/gemini-2.0-flash:batchGenerateContent", {"batch": {"input_config": {
            "requests": {"requests": [{"request": {"contents": [{"parts": [{"text": "x"}]}]}}]}}}}),
    ]
    for path, body in governed:
        status, data, headers = _raw(gw, "POST", path, body, {**ALICE, "Authorization": "Bearer sk-alice",
                                                               "x-api-key": "sk-alice"})
        assert status == 403, (path, data)
        assert headers["x-tollhouse-decision"] == "block"
        message = json.loads(data)["error"]["message"]
        if path.endswith("/batches") and path.startswith("/openai"):
            # Its models are in its input file: no worst case can be priced, so it is refused under any cap.
            assert "no price for model" in message and "pricing.overrides" in message
        else:  # priced at its worst case (the batch's requests' models), which the spent budget cannot hold
            assert "$0.01 of $0.01 used this month" in message, (path, message)
    assert mock.stats.total == reached  # none of them was forwarded
    status, data, _ = _raw(gw, "GET", "/openai/v1/models", None, {**ALICE, "Authorization": "Bearer sk-alice"})
    assert status == 200 and json.loads(data)["object"] == "list"
    assert mock.stats.total == reached + 1 and mock.stats.last_path == "/v1/models"
    events = _events(gw, 26)
    by_path = {e["path"]: e for e in events if e["endpoint_class"] in ("governed", "free")}
    for path, _ in governed:
        forward_path = path.split("/", 2)[2]
        event = by_path["/" + forward_path]
        assert event["endpoint_class"] == "governed" and event["status"] == 403 and event["decision"] == "block"
        assert event["cost_usd"] is None and (event["error"] or event["rule_id"] == "personal")
    assert by_path["/v1/models"]["endpoint_class"] == "free" and by_path["/v1/models"]["status"] == 200
    assert _spend_nusd(gw) == CAP_NUSD
    assert len(_audit_blocks(gw)) == 1 + len(governed)  # the chat call of _exhaust, then each of these


def test_a_batch_is_reserved_at_its_priciest_model_times_its_requests(mock: Mock, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory(_config(mock.url))
    requests = [{"custom_id": str(i), "params": {"model": model, "max_tokens": 1000,
                                                 "messages": [{"role": "user", "content": "x"}]}}
                for i, model in enumerate(["claude-3-5-haiku-latest"] * 3)]
    status, _, headers = _raw(gw, "POST", "/anthropic/v1/messages/batches", {"requests": requests},
                              {**ALICE, "x-api-key": "sk-alice"})
    assert status == 404 and mock.stats.total == 1  # forwarded (the mock has no batches)
    assert _remaining(headers) == _usd6(CAP_NUSD - 3 * 1000 * PER_TOKEN_NUSD)
    big = [{**r, "params": {**r["params"], "max_tokens": 8192}} for r in requests * 9]  # 27 x 8,192 tokens
    status, data, _ = _raw(gw, "POST", "/anthropic/v1/messages/batches", {"requests": big},
                           {**ALICE, "x-api-key": "sk-alice"})
    assert status == 403 and "personal" in json.loads(data)["error"]["message"] and mock.stats.total == 1


def test_a_batch_is_judged_on_every_model_its_requests_name(mock: Mock, gateway_factory: Any) -> None:
    deny = {"id": "no-opus", "scope": "org", "condition": {"type": "MODEL_DENYLIST",
                                                          "models": ["claude-3-opus-latest"]},
            "action": {"type": "hard_stop"}}
    gw: Gateway = gateway_factory(_config(mock.url, policy={"rules": [CAP, deny]}))
    requests = [{"custom_id": str(i), "params": {"model": model, "max_tokens": 10,
                                                 "messages": [{"role": "user", "content": "x"}]}}
                for i, model in enumerate(["claude-3-5-haiku-latest", "claude-3-opus-latest"])]
    status, data, _ = _raw(gw, "POST", "/anthropic/v1/messages/batches", {"requests": requests},
                           {**ALICE, "x-api-key": "sk-alice"})
    assert status == 403 and "claude-3-opus-latest is on the deny list" in json.loads(data)["error"]["message"]
    assert mock.stats.total == 0
    (event,) = _events(gw, 1)
    assert event["rule_id"] == "no-opus" and event["endpoint_class"] == "governed"


# 5. A path is judged as the provider will read it, and forwarded exactly as judged


def test_path_variants_are_metered(mock: Mock, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory(_config(mock.url))
    variants = ["/openai/v1/chat/completions/", "/openai/v1/CHAT/COMPLETIONS", "/openai/v1/chat//completions",
                "/openai/v1/chat/completions/.", "/openai/v1/chat%2Fcompletions", "/%6Fpenai/v1/chat/completions"]
    for path in variants:
        status, data, headers = _raw(gw, "POST", path, CHAT, {**ALICE, "Authorization": "Bearer sk-alice"})
        assert headers.get("x-tollhouse-budget-remaining") is not None, path  # judged against the cap
        if "CHAT" in path:
            assert status == 404, data  # the mock, like OpenAI, does not ignore case: nothing spent
            assert mock.stats.last_path == "/v1/CHAT/COMPLETIONS"
        else:
            assert status == 200, (path, data)
            assert mock.stats.last_path == "/v1/chat/completions", path
    events = _events(gw, len(variants))
    assert len(events) == len(variants)
    assert all(e["endpoint_class"] == "metered" and e["metered"] for e in events)
    answered = [e for e in events if e["status"] == 200]
    assert len(answered) == 5 and all(round(e["cost_usd"] * NUSD) == 16 * PER_TOKEN_NUSD for e in answered)
    assert _spend_nusd(gw) == 5 * 16 * PER_TOKEN_NUSD
    status, body, _ = gw.get("/api/v1/spend?scope=person&id=alice&window=month")
    assert json.loads(body)["requests"] == 5  # answered calls


def test_a_path_never_leaves_its_providers_base(mock: Mock, gateway_factory: Any) -> None:
    providers = {**upstreams(mock.url), "groq": {"upstream": mock.url + "/base", "family": "openai",
                                                    "price_provider": "openai"}}
    gw: Gateway = gateway_factory(_config(mock.url, providers=providers))
    status, _, _ = _raw(gw, "POST", "/groq/v1/chat/completions", CHAT, {**ALICE, "Authorization": "Bearer sk-a"})
    assert mock.stats.last_path == "/base/v1/chat/completions" and status == 404  # the mock serves no /base
    seen = mock.stats.total
    for path in ("/groq/../x", "/groq/v1/../../x", "/groq/v1/%2e%2e/%2E%2E/x", "/groq/v1%2F..%2F..%2Fx",
                 "/groq/..%2Fopenai/v1/chat/completions"):
        status, data, _ = _raw(gw, "POST", path, CHAT, {**ALICE, "Authorization": "Bearer sk-a"})
        assert status == 400, (path, data)
        assert "climbs above its root" in json.loads(data)["error"]["message"]
    assert mock.stats.total == seen and mock.stats.last_path == "/base/v1/chat/completions"
    refused = [e for e in _events(gw, 6) if e["status"] == 400]
    assert len(refused) == 5 and all(e["provider"] == "groq" and "climbs" in e["error"] for e in refused)
    assert sorted(a["event_id"] for a in _audit_blocks(gw)) == sorted(e["id"] for e in refused)


# 6. Unknown callers and unknown endpoints


def test_unknown_callers_are_refused_while_enforcing(mock: Mock, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory(_config(mock.url, identity={}))
    client = openai.OpenAI(base_url=gw.url + "/openai/v1", api_key="sk-proj-nobody-knows-me", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=16,
                                       messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 401 and exc.value.code == "unknown_caller"
    assert "gateway key" in exc.value.message and "tollhouse keys create" in exc.value.message
    assert mock.stats.total == 0
    # The same in Anthropic's shape, for its SDK
    claude = anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key="sk-ant-stranger", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as refused:
        claude.messages.create(model="claude-3-5-haiku-latest", max_tokens=16,
                               messages=[{"role": "user", "content": "x"}])
    assert refused.value.status_code == 401 and "tollhouse keys create" in refused.value.message
    assert mock.stats.total == 0
    events = _events(gw, 2)
    assert len(events) == 2 and len(_audit_blocks(gw)) == 2
    assert all(e["status"] == 401 and e["subject_kind"] == "unknown" and "does not know who" in e["error"]
               for e in events)

    open_gw: Gateway = gateway_factory(_config(mock.url, identity={"unknown_callers": "allow"}))
    client = openai.OpenAI(base_url=open_gw.url + "/openai/v1", api_key="sk-proj-nobody-knows-me", max_retries=0)
    reply = client.chat.completions.create(model="gpt-4o-mini", max_tokens=16,
                                           messages=[{"role": "user", "content": "x"}])
    assert reply.usage is not None and reply.usage.completion_tokens == 16
    assert mock.stats.total == 1
    (event,) = _events(open_gw, 1)
    assert event["status"] == 200 and round(event["cost_usd"] * NUSD) == 16 * PER_TOKEN_NUSD


@pytest.mark.parametrize("setup", ["enforcing", "passthrough", "observe"])
def test_unknown_endpoints_with_a_body(mock: Mock, gateway_factory: Any, setup: str) -> None:
    providers = upstreams(mock.url)
    if setup == "passthrough":
        providers["openai"]["passthrough"] = ["/v1/widgets/*/spin"]
    cfg = _config(mock.url, providers=providers, enforcement="off" if setup == "observe" else "on")
    gw: Gateway = gateway_factory(cfg)
    status, data, _ = _raw(gw, "POST", "/openai/v1/widgets/w1/spin", {"model": "gpt-4o-mini", "speed": 9},
                           {**ALICE, "Authorization": "Bearer sk-a"})
    (event,) = _events(gw, 1)
    assert event["endpoint_class"] == "unknown"
    if setup == "enforcing":
        assert status == 403 and json.loads(data)["error"]["code"] == "unknown_endpoint"
        assert "providers.openai.passthrough" in json.loads(data)["error"]["message"]
        assert mock.stats.total == 0 and event["status"] == 403 and event["decision"] == "block"
        (audited,) = _audit_blocks(gw)
        assert audited["refusal"] == "unknown_endpoint" and audited["event_id"] == event["id"]
    else:
        assert status == 404  # the mock has no such endpoint, but it was asked
        assert mock.stats.total == 1 and mock.stats.last_path == "/v1/widgets/w1/spin"
        assert event["status"] == 404 and event["decision"] == "allow"
        assert event["would"] == ("block" if setup == "observe" else None)


# 7. A model with no price under a spend cap


@pytest.mark.parametrize("unpriced", ["block", "allow"])
def test_unpriced_model_under_a_cap(mock: Mock, gateway_factory: Any, unpriced: str) -> None:
    pricing = {**PRICES, **({"unpriced": unpriced} if unpriced == "allow" else {})}  # block is the default
    gw: Gateway = gateway_factory(_config(mock.url, pricing=pricing))
    client = _oai(gw)
    if unpriced == "block":
        with pytest.raises(openai.PermissionDeniedError) as exc:
            client.chat.completions.create(model="house-model-7", max_tokens=16,
                                           messages=[{"role": "user", "content": "x"}])
        assert exc.value.code == "unpriced_model" and "pricing.overrides" in exc.value.message
        assert "house-model-7" in exc.value.message and mock.stats.total == 0
        (event,) = _events(gw, 1)
        assert event["status"] == 403 and "pricing.overrides" in event["error"]
        (audited,) = _audit_blocks(gw)
        assert audited["refusal"] == "unpriced_model" and audited["event_id"] == event["id"]
    else:
        reply = client.chat.completions.create(model="house-model-7", max_tokens=16,
                                               messages=[{"role": "user", "content": "x"}])
        assert reply.usage is not None and reply.usage.completion_tokens == 16 and mock.stats.total == 1
        (event,) = _events(gw, 1)
        assert event["status"] == 200 and event["cost_usd"] is None and event["output_tokens"] == 16
    assert _spend_nusd(gw) == 0


def test_unpriced_calls_allowed_only_while_the_cap_has_room(mock: Mock, gateway_factory: Any) -> None:
    """`pricing.unpriced: allow` lets a call with no price through uncounted, but not past a spent cap: its
    cost is unknown, not zero."""
    gw: Gateway = gateway_factory(_config(mock.url, pricing={**PRICES, "unpriced": "allow"}))
    _exhaust(gw)
    reached = mock.stats.total
    with pytest.raises(openai.PermissionDeniedError) as exc:
        _oai(gw).chat.completions.create(model="house-model-7", max_tokens=16,
                                         messages=[{"role": "user", "content": "x"}])
    assert "$0.01 of $0.01 used this month" in exc.value.message
    status, data, _ = _raw(gw, "POST", "/openai/v1/batches", {"input_file_id": "file-1", "completion_window": "24h",
                                                              "endpoint": "/v1/chat/completions"},
                           {**ALICE, "Authorization": "Bearer sk-alice"})
    assert status == 403 and "personal" in json.loads(data)["error"]["message"]
    assert mock.stats.total == reached and _spend_nusd(gw) == CAP_NUSD
    blocked = [e for e in _events(gw, 23) if e["decision"] == "block"]
    assert len(blocked) == 3 and all(e["rule_id"] == "personal" and e["cost_usd"] is None for e in blocked)


# 8. Every early refusal leaves one event with its reason, and an audit entry


def test_every_early_refusal_is_recorded_and_audited(mock: Mock, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory(_config(mock.url, limits={"max_body_bytes": 2000}))
    status, body, _ = gw.request("POST", "/api/v1/keys", {"user": "alice"})
    assert status == 201, body
    gateway_key = json.loads(body)["key"]
    path = "/openai/v1/chat/completions"
    cases: list[tuple[int, str, dict[str, str], Any]] = [
        (413, "limits.max_body_bytes", {**ALICE, "Authorization": "Bearer sk-a"},
         {**CHAT, "messages": [{"role": "user", "content": "x" * 3000}]}),
        (401, "gateway key is unknown", {"Authorization": "Bearer th-no-such-key-0000000000"}, CHAT),
        (502, "no real API key", {"Authorization": f"Bearer {gateway_key}"}, CHAT),
        (400, "not a project", {**ALICE, "Authorization": "Bearer sk-a", "X-Tollhouse-Project": "made-up"}, CHAT),
        (400, "could not read this request body", {**ALICE, "Authorization": "Bearer sk-a"}, b"{not json"),
        (401, "does not know who is calling", {"X-Tollhouse-User": "mallory", "Authorization": "Bearer sk-a"}, CHAT),
    ]
    for status, words, headers, body in cases:
        got, data, _ = _raw(gw, "POST", path, body, headers)
        assert got == status and words in json.loads(data)["error"]["message"], (status, data)
    assert mock.stats.total == 0
    events = list(reversed(_events(gw, len(cases))))
    assert len(events) == len(cases)
    for event, (status, words, _, _) in zip(events, cases, strict=True):
        assert event["status"] == status and event["decision"] == "block" and words in event["error"], event
    audited = _audit_blocks(gw)
    assert sorted(a["status"] for a in audited) == sorted(c[0] for c in cases)
    assert {a["event_id"] for a in audited} == {e["id"] for e in events}

    # The counters down (a Redis nobody listens on): 503, recorded and audited too.
    down: Gateway = gateway_factory(_config(mock.url, counters={"url": f"redis://127.0.0.1:{free_port()}/0"}))
    got, data, headers = _raw(down, "POST", path, CHAT, {**ALICE, "Authorization": "Bearer sk-a"})
    assert got == 503 and "counter store is unavailable" in json.loads(data)["error"]["message"]
    assert headers.get("retry-after") == "5" and mock.stats.total == 0
    (event,) = _events(down, 1)
    assert event["status"] == 503 and "budget counters unavailable" in event["error"]
    (audited_down,) = _audit_blocks(down)
    assert audited_down["status"] == 503 and audited_down["event_id"] == event["id"]


# 9. A block's money is true to the last digit


def test_block_message_states_the_money_exactly(mock: Mock, gateway_factory: Any) -> None:
    tiny = {**CAP, "condition": {**CAP["condition"], "threshold": 0.00005}}
    # 16 output tokens at $2.4375 per million: exactly $0.000039 a call
    pricing = {"overrides": [{"provider": "openai", "model": "gpt-4o-mini", "input_mtok": 0,
                              "output_mtok": 2.4375}]}
    gw: Gateway = gateway_factory(_config(mock.url, pricing=pricing, policy={"rules": [tiny]}))
    client = _oai(gw)
    client.chat.completions.create(model="gpt-4o-mini", max_tokens=16, messages=[{"role": "user", "content": "x"}])
    assert _spend_nusd(gw) == 39_000
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=16,
                                       messages=[{"role": "user", "content": "x"}])
    assert "$0.000039 of $0.00005 used this month" in exc.value.message
    assert "$0.0000 " not in exc.value.message and mock.stats.total == 1
    blocked = [e for e in _events(gw, 2) if e["decision"] == "block"]
    assert len(blocked) == 1 and blocked[0]["rule_id"] == "personal"
    (audited,) = _audit_blocks(gw)
    assert audited["event_id"] == blocked[0]["id"] and "$0.000039 of $0.00005 used this month" in audited["reason"]
