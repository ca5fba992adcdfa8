"""Bad input and broken upstreams: a clear, provider-shaped error, and the call is still recorded."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import anthropic
import openai
import pytest

from conftest import Gateway, Mock, upstreams
from test_gateway_sdks import _post, claude, oai


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_upstream_down_gives_provider_shaped_502_and_an_event(gateway_factory: Any) -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    gw: Gateway = gateway_factory({"providers": upstreams(dead)})
    with pytest.raises(openai.InternalServerError) as exc:
        oai(gw).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 502
    err = exc.value.body
    assert isinstance(err, dict) and err["code"] == "upstream_unreachable"
    assert "provider 'openai'" in err["message"] and "providers.openai.upstream" in err["message"]
    with pytest.raises(anthropic.APIStatusError) as aexc:
        claude(gw).messages.create(model="claude-3-5-sonnet-20241022", max_tokens=5,
                                   messages=[{"role": "user", "content": "x"}])
    assert aexc.value.status_code == 502
    assert aexc.value.body["type"] == "error"  # type: ignore[index]
    events = gw.events()
    assert [e["status"] for e in events] == [502, 502]
    assert all(e["input_tokens"] == 0 and e["cost_usd"] is None for e in events)


def test_upstream_errors_are_passed_through_as_is(gateway: Gateway) -> None:
    with pytest.raises(openai.RateLimitError) as exc:
        oai(gateway).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}],
                                             extra_headers={"X-Mock-Fault": "429"})
    assert exc.value.response.headers["retry-after"] == "1"
    ev = gateway.events()[0]
    assert ev["status"] == 429 and ev["output_tokens"] == 0 and ev["cost_usd"] is None


def test_oversize_body_gets_413_in_provider_shape(mock: Mock, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory({"providers": upstreams(mock.url), "limits": {"max_body_bytes": 2000}})
    with pytest.raises(openai.APIStatusError) as exc:
        oai(gw).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "word " * 1000}])
    assert exc.value.status_code == 413
    assert "limits.max_body_bytes" in exc.value.body["message"]  # type: ignore[index]
    assert mock.stats.total == 0


def test_malformed_json_is_forwarded_and_recorded_as_unparsed(gateway: Gateway, mock: Mock) -> None:
    status, body = _post(gateway.url + "/openai/v1/chat/completions", b"{not json")
    assert status == 400  # the provider's own answer, forwarded
    assert "error" in json.loads(body)
    ev = gateway.events()[0]
    assert ev["usage_source"] == "unparsed" and ev["model"] is None and ev["status"] == 400


def test_client_disconnect_mid_stream_still_records_usage_seen(gateway: Gateway) -> None:
    """The upstream stalls after 3 chunks; the client gives up; the event says what was seen."""
    client = claude(gateway)
    with client.messages.stream(model="claude-3-5-sonnet-20241022", max_tokens=50,
                                messages=[{"role": "user", "content": "a b c d e f g h"}],
                                extra_headers={"X-Mock-Fault": "stall-stream"}) as s:
        it = iter(s)
        next(it)
        next(it)
    deadline = time.time() + 5
    events: list[dict[str, Any]] = []
    while time.time() < deadline and not events:
        events = gateway.events()
        time.sleep(0.05)
    ev = events[0]
    assert ev["client_disconnected"] is True
    assert ev["usage_source"] == "partial"
    assert ev["input_tokens"] == 8  # from message_start: the prompt's real usage
    assert ev["output_tokens"] >= 1 and ev["cost_usd"] > 0


def test_openai_stream_cut_by_upstream_is_estimated(gateway: Gateway) -> None:
    with pytest.raises(openai.APIError):
        stream = oai(gateway).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "one two three"}], stream=True,
            extra_headers={"X-Mock-Fault": "cut-stream"})
        list(stream)
    ev = gateway.events()[0]
    assert ev["usage_source"] == "estimate"
    assert ev["output_tokens"] == 3 and ev["input_tokens"] > 0 and ev["cost_usd"] > 0
    assert ev["error"] and "ended abnormally" in ev["error"]


def test_unknown_provider_prefix(gateway: Gateway) -> None:
    status, body = _post(gateway.url + "/nosuch/v1/chat/completions", {"model": "x"})
    assert status == 404
    assert "/openai/" in json.loads(body)["error"]["message"]
