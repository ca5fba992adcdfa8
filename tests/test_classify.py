"""Every request is classified, and nothing spends unjudged: path normalisation, the provider prefix,
endpoint classes, worst-case facts and model output limits (pure functions: tables and Hypothesis)."""

from __future__ import annotations

import posixpath
import re
from typing import Any
from urllib.parse import quote, unquote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tollhouse.config import ConfigError, parse_settings
from tollhouse.model_limits import known_max_output, worst_output_tokens
from tollhouse.pricing import PriceBook
from tollhouse.providers import lenient
from tollhouse.providers.anthropic import AnthropicProtocol
from tollhouse.providers.base import Endpoint, RequestFacts
from tollhouse.providers.classify import EndpointClass, Route, classify, metered_endpoint, passthrough_allows
from tollhouse.providers.family import Family
from tollhouse.providers.gemini import GeminiProtocol
from tollhouse.providers.openai import OpenAIProtocol
from tollhouse.providers.paths import PathError, normalise_path, split_provider

M, G, F, U = EndpointClass.metered, EndpointClass.governed, EndpointClass.free, EndpointClass.unknown
OPENAI, ANTHROPIC, GEMINI = Family.openai, Family.anthropic, Family.gemini


# --------------------------------------------------------------------------------------------
# The review's path variants: each reaches the class the plain path has, and is forwarded as judged


@pytest.mark.parametrize(("raw", "provider", "tail"), [
    ("/openai/v1/chat/completions", "openai", "/v1/chat/completions"),
    ("/openai/v1/chat/completions/", "openai", "/v1/chat/completions"),
    ("/openai/v1/CHAT/COMPLETIONS", "openai", "/v1/CHAT/COMPLETIONS"),  # case kept; matched without it
    ("/openai/v1/chat//completions", "openai", "/v1/chat/completions"),
    ("/openai/v1/chat/completions/.", "openai", "/v1/chat/completions"),
    ("/openai/v1/chat/completions/./", "openai", "/v1/chat/completions"),
    ("/openai/v1/chat%2Fcompletions", "openai", "/v1/chat/completions"),
    ("/openai/v1/chat%2fcompletions", "openai", "/v1/chat/completions"),
    ("/openai/v1/%63hat/completions", "openai", "/v1/chat/completions"),
    ("/%6Fpenai/v1/chat/completions", "openai", "/v1/chat/completions"),
    ("//openai//v1/chat/completions", "openai", "/v1/chat/completions"),
    ("/./openai/v1/chat/completions", "openai", "/v1/chat/completions"),
    ("/openai/v1/models/../chat/completions", "openai", "/v1/chat/completions"),
    ("/openai/v1/models/%2e%2e/chat/completions", "openai", "/v1/chat/completions"),
    ("/openai/v1/models/%2E%2E/chat/%2e/completions", "openai", "/v1/chat/completions"),
    ("/openai%2Fv1/chat/completions", "openai", "/v1/chat/completions"),
    ("/azure/openai/deployments/prod%20gpt/chat/completions", "azure",
     "/openai/deployments/prod%20gpt/chat/completions"),
    ("/gemini/v1beta/models/gemini-2.0-flash%3AgenerateContent", "gemini",
     "/v1beta/models/gemini-2.0-flash:generateContent"),
    ("/openai", "openai", "/"),
    ("/openai/", "openai", "/"),
])
def test_split_provider_decodes_the_prefix_and_normalises_the_tail(raw: str, provider: str, tail: str) -> None:
    assert split_provider(raw) == (provider, tail)


@pytest.mark.parametrize("raw", [
    "/groq/../x",
    "/groq/%2e%2e/x",
    "/groq/%2E%2E/openai/v1/chat/completions",
    "/groq/v1/../../x",
    "/groq/v1/..%2F..%2Fx",
    "/../openai/v1/chat/completions",
    "/%2e%2e/openai/v1/chat/completions",
    "/",
    "//",
    "/openai/v1/chat%00/completions",
    "/openai/v1/chat%5Ccompletions",
    "/openai/v1\\chat/completions",
    "/openai/v1/chat/completions%",
    "/openai/v1/chat/completions%2",
    "/openai/v1/chat/completions%zz",
    "/openai/v1/%FF/completions",
    "openai/v1/chat/completions",
])
def test_paths_that_leave_their_root_or_do_not_decode_are_refused(raw: str) -> None:
    with pytest.raises(PathError) as exc:
        split_provider(raw)
    assert repr(raw) in str(exc.value)  # the message names the path


def test_the_refusal_says_what_to_do() -> None:
    with pytest.raises(PathError, match="climbs above its root"):
        split_provider("/groq/../x")
    with pytest.raises(PathError, match="names no provider"):
        split_provider("/")


@pytest.mark.parametrize(("raw", "expected"), [
    ("/v1/chat/completions", "/v1/chat/completions"),
    ("/a/./b/../c/", "/a/c"),
    ("/a%20b/%C3%A9", "/a%20b/%C3%A9"),
    ("/a b/é", "/a%20b/%C3%A9"),  # re-encoded: upstream decodes it to exactly these segments
    ("/%7Euser/%41", "/~user/A"),  # unreserved characters travel literally
    ("/x%3Fy/z%23w/%25", "/x%3Fy/z%23w/%25"),  # '?', '#', '%' stay data, never become syntax
    ("/models/m:generateContent", "/models/m:generateContent"),
    ("/", "/"),
    ("/.", "/"),
    ("/a/..", "/"),
])
def test_normalise_path_table(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected


@pytest.mark.parametrize("raw", ["/..", "/a/../..", "/%2e%2e", "/a/%2E%2E/%2e%2e/b"])
def test_normalise_path_refuses_to_climb_above_the_root(raw: str) -> None:
    with pytest.raises(PathError):
        normalise_path(raw)


# --------------------------------------------------------------------------------------------
# Hypothesis: normalise_path against a reference built differently (whole-string decode + posixpath)

_HEX_OK = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SENTINEL = "/\x01root"  # a control character: no accepted path contains one, so none can forge it


def reference_normalise(raw: str) -> str:
    if not raw.startswith("/") or _HEX_OK.search(raw):
        raise PathError(raw)
    try:
        text = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise PathError(raw) from None
    if any(ord(c) < 32 or c in "\x7f\\" for c in text):
        raise PathError(raw)
    resolved = posixpath.normpath(_SENTINEL + "/" + text)
    if resolved != _SENTINEL and not resolved.startswith(_SENTINEL + "/"):
        raise PathError(raw)  # '..' climbed over the sentinel: above the root
    rest = resolved[len(_SENTINEL):] or "/"
    return quote(rest, safe="/!$&'()*+,;=:@")


_SEGMENTS = st.one_of(
    st.sampled_from(["", ".", "..", "%2e", "%2E%2e", ".%2E", "v1", "chat", "completions", "%2F", "%2f", "a%2Fb",
                     "%41", "x:y", "%3A", "~", "%7e", "%20", "é", "%C3%A9", "%FF", "%", "%4", "%zz", "\\",
                     "%5C", "%00", "%25", "%252e", "models", "gemini:generateContent", "CHAT", "a;b", "+"]),
    st.text(alphabet="abcXYZ09-._~%2eEfF/:;@!$&'()*+,= é", max_size=8),
)
_RAW_PATHS = st.lists(_SEGMENTS, max_size=8).map(lambda segs: "/" + "/".join(segs))


def _outcome(fn: Any, raw: str) -> str | None:
    try:
        result = fn(raw)
    except PathError:
        return None
    assert isinstance(result, str)
    return result


@settings(max_examples=600)
@given(_RAW_PATHS)
@example("/a/..")
@example("/a/b/%2e%2e/..")
@example("/a%2F..%2F..")
def test_normalise_path_agrees_with_the_reference(raw: str) -> None:
    assert _outcome(normalise_path, raw) == _outcome(reference_normalise, raw)


@settings(max_examples=300)
@given(_RAW_PATHS)
def test_normalise_path_is_idempotent_and_canonical(raw: str) -> None:
    try:
        once = normalise_path(raw)
    except PathError:
        return
    assert normalise_path(once) == once
    parts = once.split("/")[1:]
    assert ".." not in parts and "." not in parts
    assert once == "/" or ("" not in parts)  # no duplicate or trailing slash
    # what the upstream decodes is exactly the segments the gateway judged
    assert [unquote(p) for p in parts] == [p for p in unquote(once).split("/")[1:]]


@given(st.sampled_from(["openai", "groq", "%6Fpenai", "gemini"]), _RAW_PATHS)
def test_split_provider_is_normalise_path_with_the_prefix_as_root(prefix: str, rest: str) -> None:
    raw = "/" + prefix + rest
    try:
        provider, tail = split_provider(raw)
    except PathError:
        return
    assert provider == unquote(prefix)
    assert normalise_path(tail) == tail
    whole = normalise_path(raw)
    assert whole == "/" + provider + ("" if tail == "/" else tail)  # '..' never consumed the provider


# --------------------------------------------------------------------------------------------
# classify(): metered, governed, free, unknown


@pytest.mark.parametrize(("family", "method", "path", "cls", "endpoint"), [
    # metered (today's endpoints), whatever base path precedes the API's own
    (OPENAI, "POST", "/v1/chat/completions", M, Endpoint.chat),
    (OPENAI, "POST", "/v1/CHAT/COMPLETIONS", M, Endpoint.chat),
    (OPENAI, "post", "/v1/chat/completions", M, Endpoint.chat),
    (OPENAI, "POST", "/v1/completions", M, Endpoint.completions),
    (OPENAI, "POST", "/v1/embeddings", M, Endpoint.embeddings),
    (OPENAI, "POST", "/v1/responses", M, Endpoint.responses),
    (OPENAI, "POST", "/openai/deployments/prod-gpt4o/chat/completions", M, Endpoint.chat),
    (OPENAI, "POST", "/openai/deployments/prod-gpt4o/embeddings", M, Endpoint.embeddings),
    (OPENAI, "POST", "/openai/v1/chat/completions", M, Endpoint.chat),  # Groq, Azure v1
    (OPENAI, "POST", "/chat/completions", M, Endpoint.chat),  # Perplexity, DeepSeek
    (ANTHROPIC, "POST", "/v1/messages", M, Endpoint.messages),
    (ANTHROPIC, "POST", "/v1/Messages", M, Endpoint.messages),
    (GEMINI, "POST", "/v1beta/models/gemini-2.0-flash:generateContent", M, Endpoint.generate),
    (GEMINI, "POST", "/v1beta/models/gemini-2.0-flash:GENERATECONTENT", M, Endpoint.generate),
    (GEMINI, "POST", "/v1beta/models/gemini-2.5-pro:streamGenerateContent", M, Endpoint.stream_generate),
    (GEMINI, "POST", "/v1beta/tunedModels/my-model:generateContent", M, Endpoint.generate),
    # governed: OpenAI
    (OPENAI, "POST", "/v1/images/generations", G, Endpoint.images),
    (OPENAI, "POST", "/v1/images/edits", G, Endpoint.images),
    (OPENAI, "POST", "/v1/images/variations", G, Endpoint.images),
    (OPENAI, "POST", "/openai/deployments/dalle3/images/generations", G, Endpoint.images),
    (OPENAI, "POST", "/v1/audio/speech", G, Endpoint.audio_speech),
    (OPENAI, "POST", "/v1/audio/transcriptions", G, Endpoint.audio_transcription),
    (OPENAI, "POST", "/v1/audio/translations", G, Endpoint.audio_transcription),
    (OPENAI, "POST", "/v1/batches", G, Endpoint.batches),
    (OPENAI, "POST", "/v1/fine_tuning/jobs", G, Endpoint.fine_tuning),
    (OPENAI, "POST", "/v1/fine_tuning/jobs/ftjob-1/resume", G, Endpoint.fine_tuning),
    (OPENAI, "POST", "/v1/realtime/sessions", G, Endpoint.realtime),
    (OPENAI, "POST", "/v1/realtime/transcription_sessions", G, Endpoint.realtime),
    (OPENAI, "POST", "/v1/realtime/client_secrets", G, Endpoint.realtime),
    (OPENAI, "GET", "/v1/realtime", G, Endpoint.realtime),
    (OPENAI, "POST", "/v1/threads/runs", G, Endpoint.assistants_run),
    (OPENAI, "POST", "/v1/threads/thread_1/runs", G, Endpoint.assistants_run),
    (OPENAI, "POST", "/v1/threads/thread_1/runs/run_1/submit_tool_outputs", G, Endpoint.assistants_run),
    (OPENAI, "POST", "/v1/videos", G, Endpoint.videos),
    (OPENAI, "POST", "/v1/evals/eval_1/runs", G, Endpoint.evals),
    (OPENAI, "POST", "/v1/containers", G, Endpoint.containers),
    # governed: Anthropic, Gemini
    (ANTHROPIC, "POST", "/v1/messages/batches", G, Endpoint.message_batches),
    (ANTHROPIC, "POST", "/v1/complete", G, Endpoint.complete),
    (GEMINI, "POST", "/v1beta/models/gemini-2.0-flash:batchGenerateContent", G, Endpoint.batch_generate),
    (GEMINI, "POST", "/v1beta/cachedContents", G, Endpoint.cached_contents),
    (GEMINI, "PATCH", "/v1beta/cachedContents/abc", G, Endpoint.cached_contents),
    (GEMINI, "POST", "/v1beta/models/imagen-3.0-generate-002:predict", G, Endpoint.predict),
    (GEMINI, "POST", "/v1beta/models/veo-2.0-generate-001:predictLongRunning", G, Endpoint.predict),
    (GEMINI, "POST", "/v1beta/models/text-embedding-004:embedContent", G, Endpoint.embed_content),
    (GEMINI, "POST", "/v1beta/models/text-embedding-004:batchEmbedContents", G, Endpoint.batch_embed),
    (GEMINI, "POST", "/v1beta/models/aqa:generateAnswer", G, Endpoint.answer),
    (GEMINI, "POST", "/v1beta/tunedModels", G, Endpoint.fine_tuning),
    (GEMINI, "GET", "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent", G,
     Endpoint.realtime),
    # free
    (OPENAI, "GET", "/v1/models", F, Endpoint.passthrough),
    (OPENAI, "GET", "/v1/models/gpt-4o", F, Endpoint.passthrough),
    (OPENAI, "GET", "/v1/files/file-abc", F, Endpoint.passthrough),
    (OPENAI, "GET", "/v1/files/file-abc/content", F, Endpoint.passthrough),
    (OPENAI, "GET", "/v1/batches/batch_1", F, Endpoint.passthrough),
    (OPENAI, "GET", "/v1/responses/resp_1", F, Endpoint.passthrough),
    (OPENAI, "GET", "/v1/chat/completions", F, Endpoint.passthrough),  # stored completions, listed
    (OPENAI, "DELETE", "/v1/files/file-abc", F, Endpoint.passthrough),
    (OPENAI, "DELETE", "/v1/responses/resp_1", F, Endpoint.passthrough),
    (OPENAI, "POST", "/v1/moderations", F, Endpoint.moderations),
    (OPENAI, "POST", "/v1/files", F, Endpoint.passthrough),
    (OPENAI, "POST", "/v1/batches/batch_1/cancel", F, Endpoint.passthrough),
    (OPENAI, "POST", "/v1/fine_tuning/jobs/ftjob-1/cancel", F, Endpoint.passthrough),
    (OPENAI, "POST", "/v1/responses/resp_1/cancel", F, Endpoint.passthrough),
    (OPENAI, "POST", "/v1/responses/input_tokens", F, Endpoint.count_tokens),
    (ANTHROPIC, "GET", "/v1/models", F, Endpoint.passthrough),
    (ANTHROPIC, "POST", "/v1/messages/count_tokens", F, Endpoint.count_tokens),
    (ANTHROPIC, "GET", "/v1/messages/batches/msgbatch_1", F, Endpoint.passthrough),
    (ANTHROPIC, "GET", "/v1/messages/batches/msgbatch_1/results", F, Endpoint.passthrough),
    (ANTHROPIC, "POST", "/v1/messages/batches/msgbatch_1/cancel", F, Endpoint.passthrough),
    (ANTHROPIC, "DELETE", "/v1/messages/batches/msgbatch_1", F, Endpoint.passthrough),
    (GEMINI, "GET", "/v1beta/models", F, Endpoint.passthrough),
    (GEMINI, "GET", "/v1beta/models/gemini-2.0-flash", F, Endpoint.passthrough),
    (GEMINI, "POST", "/v1beta/models/gemini-2.0-flash:countTokens", F, Endpoint.count_tokens),
    (GEMINI, "GET", "/v1beta/files/abc", F, Endpoint.passthrough),
    (GEMINI, "DELETE", "/v1beta/cachedContents/abc", F, Endpoint.passthrough),
    (GEMINI, "POST", "/v1beta/batches/b1:cancel", F, Endpoint.passthrough),
    # unknown
    (OPENAI, "POST", "/v1/vector_stores", U, Endpoint.passthrough),
    (OPENAI, "POST", "/v1/chat/completions/extra", U, Endpoint.passthrough),
    (OPENAI, "PUT", "/v1/chat/completions", U, Endpoint.passthrough),
    (OPENAI, "GET", "/v1/something-new", U, Endpoint.passthrough),
    (OPENAI, "POST", "/v1/chat;x/completions", M, Endpoint.completions),  # judged by its suffix all the same
    (OPENAI, "POST", "/v1/chat/completions;x", U, Endpoint.passthrough),
    (OPENAI, "POST", "/", U, Endpoint.passthrough),
    (ANTHROPIC, "POST", "/v1/messages/extra", U, Endpoint.passthrough),
    (ANTHROPIC, "PUT", "/v1/messages", U, Endpoint.passthrough),
    (GEMINI, "POST", "/v1beta/models/gemini-2.0-flash:newThing", U, Endpoint.passthrough),
    (GEMINI, "GET", "/v1beta/models/gemini-2.0-flash:generateContent/x", F, Endpoint.passthrough),
    (GEMINI, "POST", "/v1beta/corpora", U, Endpoint.passthrough),
])
def test_classify(family: Family, method: str, path: str, cls: EndpointClass, endpoint: Endpoint) -> None:
    assert classify(family, method, normalise_path(path)) == Route(cls, endpoint)


@pytest.mark.parametrize("raw", [
    "/openai/v1/chat/completions", "/openai/v1/chat/completions/", "/openai/v1/CHAT/COMPLETIONS",
    "/openai/v1/chat//completions", "/openai/v1/chat/completions/.", "/openai/v1/chat%2Fcompletions",
    "/%6Fpenai/v1/chat/completions", "/openai/v1/x/../chat/completions",
])
def test_every_variant_of_a_metered_path_is_metered(raw: str) -> None:
    provider, tail = split_provider(raw)
    assert provider == "openai"
    assert classify(OPENAI, "POST", tail) == Route(M, Endpoint.chat)


@pytest.mark.parametrize(("family", "path"), [
    (OPENAI, "/v1/chat/completions"), (ANTHROPIC, "/v1/messages"),
    (GEMINI, "/v1beta/models/gemini-2.0-flash:generateContent"),
])
def test_metered_endpoint_is_the_metered_part_of_the_table(family: Family, path: str) -> None:
    assert metered_endpoint(family, "POST", path) is classify(family, "POST", path).endpoint
    assert metered_endpoint(family, "POST", path + "/x") is Endpoint.passthrough


def test_passthrough_allows_only_the_listed_normalised_paths() -> None:
    allowed = ("/v1/vector_stores", "/v1/vector_stores/*/files")
    assert passthrough_allows(allowed, "/v1/vector_stores")
    assert passthrough_allows(allowed, "/v1/vector_stores/vs_1/files")
    assert not passthrough_allows(allowed, "/v1/vector_stores/vs_1")
    assert not passthrough_allows(allowed, "/v1/VECTOR_STORES")
    assert not passthrough_allows(allowed, "/v1/vector_stores/vs_1/files/f1")
    assert not passthrough_allows((), "/v1/vector_stores")


# --------------------------------------------------------------------------------------------
# Config: providers.NAME.passthrough and pricing.overrides[].max_output_tokens


def test_passthrough_paths_are_stored_normalised() -> None:
    settings = parse_settings({"providers": {"openai": {"passthrough": [
        "/v1/vector_stores/", "/v1//vector_stores/*/files", "/v1/x/../assistants"]}}}, "t.yaml")
    assert settings.providers["openai"].passthrough == (
        "/v1/vector_stores", "/v1/vector_stores/*/files", "/v1/assistants")
    assert settings.providers["anthropic"].passthrough == ()


@pytest.mark.parametrize(("path", "what"), [
    ("v1/vector_stores", "starting with '/'"),
    ("/../x", "climbs above its root"),
    ("/v1/x?y=1", "without a query string"),
    ("/", "lets everything through"),
    ("/v1/%zz", "malformed percent-escape"),
])
def test_bad_passthrough_paths_are_named(path: str, what: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_settings({"providers": {"groq": {"upstream": "https://api.groq.com/openai",
                                               "passthrough": ["/v1/ok", path]}}}, "t.yaml")
    message = str(exc.value)
    assert "providers.groq.passthrough" in message and "[1]" in message and what in message


def test_max_output_override_alone_keeps_the_table_price() -> None:
    settings = parse_settings({"pricing": {"overrides": [
        {"provider": "openai", "model": "gpt-4o", "max_output_tokens": 4096},
        {"provider": "openai", "model": "house-model", "input_mtok": 1, "output_mtok": 2,
         "max_output_tokens": 1000},
    ]}}, "t.yaml")
    book = PriceBook(settings.pricing.overrides)
    assert book.max_output_tokens("openai", "gpt-4o") == 4096
    assert book.max_output_tokens("openai", "gpt-4o-mini") == 16384
    assert book.max_output_tokens("openai", "house-model") == 1000
    assert book.max_output_tokens("openai", "nobody-knows-me") is None
    # the gpt-4o entry changes no price: the table's still applies
    assert book.token_cost_nusd("openai", "gpt-4o", 1000, 1000) == PriceBook(()).token_cost_nusd(
        "openai", "gpt-4o", 1000, 1000)
    assert book.token_cost_nusd("openai", "house-model", 1_000_000, 1_000_000) == 3 * 10**9


@pytest.mark.parametrize(("entry", "what"), [
    ({"input_mtok": 1}, "output_mtok is required"),
    ({"output_mtok": 1}, "input_mtok is required"),
    ({}, "max_output_tokens, or both"),
    ({"cache_read_mtok": 1, "max_output_tokens": 5}, "cache prices need"),
    ({"max_output_tokens": 0}, "greater than 0"),
])
def test_incomplete_overrides_are_named(entry: dict[str, Any], what: str) -> None:
    with pytest.raises(ConfigError, match=what) as exc:
        parse_settings({"pricing": {"overrides": [{"provider": "openai", "model": "m", **entry}]}}, "t.yaml")
    assert "pricing.overrides[0]" in str(exc.value)


# --------------------------------------------------------------------------------------------
# The model's real maximum output


@pytest.mark.parametrize(("model", "expected"), [
    ("gpt-4o-mini", 16384), ("gpt-4o-mini-2024-07-18", 16384), ("gpt-4o", 16384), ("gpt-4o-2024-08-06", 16384),
    ("gpt-4o-2024-05-13", 4096), ("gpt-4.1", 32768), ("gpt-4.1-nano-2025-04-14", 32768), ("o1", 100000),
    ("o1-mini", 65536), ("o3", 100000), ("o3-mini-2025-01-31", 100000), ("gpt-4", 8192), ("gpt-4-turbo", 4096),
    ("claude-3-5-sonnet-20241022", 8192), ("claude-3-5-sonnet-latest", 8192), ("claude-3-7-sonnet-20250219", 64000),
    ("claude-sonnet-4-20250514", 64000), ("claude-opus-4-20250514", 32000), ("claude-opus-4-1-20250805", 32000),
    ("claude-3-haiku-20240307", 4096), ("gemini-2.0-flash", 8192), ("gemini-2.0-flash-001", 8192),
    ("models/gemini-2.5-pro", 65536), ("gemini-2.5-pro-preview-06-05", 65536), ("GPT-4o", 16384),
    ("openai/gpt-4o", 16384), ("ft:gpt-4o-mini-2024-07-18:acme::abc123", 16384),
    ("gpt-4.5-preview", 16384), ("gpt-4o1", None), ("my-deployment", None), ("", None),
])
def test_known_max_output(model: str, expected: int | None) -> None:
    assert known_max_output(model) == expected


@pytest.mark.parametrize(("requested", "model_max", "default", "expected"), [
    (None, 16384, 4096, 16384),  # no limit set: the model's maximum, not the small default
    (100, 16384, 4096, 100),
    (10**9, 16384, 4096, 16384),  # more than the model can: the model's maximum
    (None, None, 4096, 4096),  # nobody knows the model: the configured default
    (20000, None, 4096, 20000),
])
def test_worst_output_tokens(requested: int | None, model_max: int | None, default: int, expected: int) -> None:
    assert worst_output_tokens(requested, model_max, default) == expected


# --------------------------------------------------------------------------------------------
# Facts for the worst case


@pytest.mark.parametrize(("value", "expected"), [
    (20000, 20000), (20000.0, 20000), ("20000", 20000), (" 20000 ", 20000), ("20000.0", 20000), ("+7", 7),
    (-1, None), (0, None), (True, None), (False, None), (float("nan"), None), (float("inf"), None),
    (1.5, None), ("1.5", None), ("-5", None), ("lots", None), ("", None), (None, None), ([5], None),
    (2**31, None), ("9" * 40, None), (2**31 - 1, 2**31 - 1),
])
def test_lenient_count(value: object, expected: int | None) -> None:
    assert lenient.count(value) == expected


_OA = OpenAIProtocol()
_AN = AnthropicProtocol()
_GE = GeminiProtocol()


@pytest.mark.parametrize(("endpoint", "path", "body", "expected"), [
    (Endpoint.chat, "/v1/chat/completions", {"model": "gpt-4o", "n": 3, "max_tokens": 20000.0},
     RequestFacts("gpt-4o", False, 20000, choices=3)),
    (Endpoint.chat, "/v1/chat/completions", {"model": "gpt-4o", "n": "2", "max_completion_tokens": "20000"},
     RequestFacts("gpt-4o", False, 20000, choices=2)),
    (Endpoint.chat, "/v1/chat/completions", {"model": "gpt-4o", "max_completion_tokens": 10, "max_tokens": 500},
     RequestFacts("gpt-4o", False, 500)),  # a server may honour either: the larger
    (Endpoint.chat, "/v1/chat/completions", {"model": "gpt-4o", "max_completion_tokens": 10, "max_tokens": "x"},
     RequestFacts("gpt-4o", False, None)),  # one unreadable: the model's maximum
    (Endpoint.chat, "/v1/chat/completions", {"model": "gpt-4o", "max_tokens": float("nan"), "n": None},
     RequestFacts("gpt-4o", False, None)),
    (Endpoint.chat, "/v1/chat/completions", {"model": "gpt-4o", "n": "many"},
     RequestFacts("gpt-4o", False, None, choices=lenient.MAX_CHOICES)),
    (Endpoint.chat, "/v1/chat/completions", {"model": "gpt-4o", "n": 100000},
     RequestFacts("gpt-4o", False, None, choices=lenient.MAX_CHOICES)),
    (Endpoint.completions, "/v1/completions", {"model": "davinci-002", "n": 2, "best_of": 5, "max_tokens": 16},
     RequestFacts("davinci-002", False, 16, choices=5)),
    (Endpoint.responses, "/v1/responses", {"model": "o3", "background": True, "max_output_tokens": 4000},
     RequestFacts("o3", False, 4000, background=True)),
    (Endpoint.responses, "/v1/responses", {"model": "o3", "background": "true"},
     RequestFacts("o3", False, None, background=True)),
    (Endpoint.responses, "/v1/responses", {"model": "o3", "background": False, "n": 4},
     RequestFacts("o3", False, None)),  # the Responses API has no n
    (Endpoint.images, "/v1/images/generations", {"model": "gpt-image-1", "n": 4, "size": "1024x1536"},
     RequestFacts("gpt-image-1", False, None, choices=4, size="1024x1536")),
    (Endpoint.images, "/v1/images/generations", {"prompt": "a cat"},
     RequestFacts("dall-e-2", False, None)),
    (Endpoint.images, "/v1/images/edits", {"model": "gpt-image-1", "n": "2", "size": "auto"},  # form fields
     RequestFacts("gpt-image-1", False, None, choices=2, size="auto")),
    (Endpoint.audio_speech, "/v1/audio/speech", {"model": "tts-1-hd", "input": "hi", "voice": "alloy"},
     RequestFacts("tts-1-hd", False, None)),
    (Endpoint.audio_transcription, "/v1/audio/transcriptions", {"model": "whisper-1"},
     RequestFacts("whisper-1", False, None)),
    (Endpoint.batches, "/v1/batches", {"input_file_id": "file-1", "endpoint": "/v1/chat/completions",
                                       "model": "sneaky"},
     RequestFacts(None, False, None)),
    (Endpoint.fine_tuning, "/v1/fine_tuning/jobs", {"model": "gpt-4o-mini-2024-07-18", "training_file": "f"},
     RequestFacts("gpt-4o-mini-2024-07-18", False, None)),
    (Endpoint.images, "/openai/deployments/dalle3/images/generations", {"prompt": "x"},
     RequestFacts("dalle3", False, None)),
])
def test_openai_facts(endpoint: Endpoint, path: str, body: dict[str, Any], expected: RequestFacts) -> None:
    assert _OA.facts(endpoint, path, {}, body) == expected


def test_anthropic_facts_lenient_and_batches() -> None:
    assert _AN.facts(Endpoint.messages, "/v1/messages", {}, {"model": "claude-sonnet-4-20250514",
                                                              "max_tokens": "20000"}) == RequestFacts(
        "claude-sonnet-4-20250514", False, 20000)
    assert _AN.facts(Endpoint.complete, "/v1/complete", {}, {"model": "claude-2.1",
                                                             "max_tokens_to_sample": 300.0}) == RequestFacts(
        "claude-2.1", False, 300)
    batch = {"requests": [
        {"custom_id": "a", "params": {"model": "claude-3-haiku-20240307", "max_tokens": 100}},
        {"custom_id": "b", "params": {"model": "claude-opus-4-20250514", "max_tokens": 2000}},
        {"custom_id": "c", "params": {"model": "claude-3-haiku-20240307", "max_tokens": 10}},
    ]}
    assert _AN.facts(Endpoint.message_batches, "/v1/messages/batches", {}, batch) == RequestFacts(
        None, False, 2000, choices=3, batch_models=("claude-3-haiku-20240307", "claude-opus-4-20250514"))
    batch["requests"].append({"custom_id": "d", "params": {"model": "claude-3-haiku-20240307"}})
    assert _AN.facts(Endpoint.message_batches, "/v1/messages/batches", {}, batch).max_output_tokens is None


@pytest.mark.parametrize(("endpoint", "path", "body", "expected"), [
    (Endpoint.generate, "/v1beta/models/gemini-2.0-flash:generateContent",
     {"generationConfig": {"maxOutputTokens": "2048", "candidateCount": 4}},
     RequestFacts("gemini-2.0-flash", False, 2048, choices=4)),
    (Endpoint.generate, "/v1beta/models/gemini-2.0-flash:generateContent",
     {"generation_config": {"max_output_tokens": 512.0, "candidate_count": "2"}},  # proto field names
     RequestFacts("gemini-2.0-flash", False, 512, choices=2)),
    (Endpoint.generate, "/v1beta/models/gemini-2.0-flash:generateContent",
     {"generationConfig": {"maxOutputTokens": 0, "candidateCount": 0}},  # proto3: 0 is unset
     RequestFacts("gemini-2.0-flash", False, None)),
    (Endpoint.stream_generate, "/v1beta/models/gemini-2.5-pro:streamGenerateContent", {},
     RequestFacts("gemini-2.5-pro", True, None)),
    (Endpoint.predict, "/v1beta/models/imagen-3.0-generate-002:predict", {"instances": []},
     RequestFacts("imagen-3.0-generate-002", False, None)),
    (Endpoint.cached_contents, "/v1beta/cachedContents", {"model": "models/gemini-1.5-flash-001"},
     RequestFacts("gemini-1.5-flash-001", False, None)),
    (Endpoint.predict, "/v1beta/models/imagen-3.0-generate-002:predict", {"parameters": {"sampleCount": "4"}},
     RequestFacts("imagen-3.0-generate-002", False, None, choices=4)),
    (Endpoint.predict, "/v1beta/models/veo-2.0-generate-001:predictLongRunning", {"parameters": {"sample_count": 2}},
     RequestFacts("veo-2.0-generate-001", False, None, choices=2)),
    (Endpoint.batch_generate, "/v1beta/models/gemini-2.5-flash:batchGenerateContent", {"batch": {"input_config": {
        "requests": {"requests": [
            {"request": {"contents": [], "generationConfig": {"maxOutputTokens": 100}}},
            {"request": {"contents": [], "generation_config": {"max_output_tokens": "900", "candidateCount": 2}}},
        ]}}}},
     RequestFacts("gemini-2.5-flash", False, 900, choices=4)),
    (Endpoint.batch_generate, "/v1beta/models/gemini-2.5-flash:batchGenerateContent", {"batch": {"inputConfig": {
        "requests": {"requests": [{"request": {"contents": []}}]}}}},
     RequestFacts("gemini-2.5-flash", False, None, choices=1)),
    (Endpoint.batch_generate, "/v1beta/models/gemini-2.5-flash:batchGenerateContent",
     {"batch": {"inputConfig": {"fileName": "files/abc"}}},
     RequestFacts("gemini-2.5-flash", False, None)),
])
def test_gemini_facts(endpoint: Endpoint, path: str, body: dict[str, Any], expected: RequestFacts) -> None:
    assert _GE.facts(endpoint, path, {}, body) == expected


# --------------------------------------------------------------------------------------------
# Hypothesis: however a route's path is spelled, it is judged as the route


_ROUTES = [
    (OPENAI, "POST", "/v1/chat/completions"), (OPENAI, "POST", "/v1/images/generations"),
    (OPENAI, "POST", "/v1/threads/t1/runs"), (OPENAI, "GET", "/v1/files/file-1"),
    (OPENAI, "POST", "/openai/deployments/d1/chat/completions"), (ANTHROPIC, "POST", "/v1/messages"),
    (ANTHROPIC, "POST", "/v1/messages/batches"), (ANTHROPIC, "POST", "/v1/messages/count_tokens"),
    (GEMINI, "POST", "/v1beta/models/gemini-2.0-flash:generateContent"),
    (GEMINI, "POST", "/v1beta/cachedContents"),
]


def _respell(path: str, choices: list[int]) -> str:
    """The same path written another way: separators doubled or encoded, letters encoded or upper-cased, a
    detour through '..', '.' segments, a trailing slash."""
    out = []
    for i, ch in enumerate(path):
        pick = choices[i % len(choices)] if choices else 0
        if ch == "/":
            out.append(["/", "//", "%2F", "/./", "/x/../", "/%2e/", "/y/%2E%2e/"][pick % 7])
        elif ch.isalpha():
            out.append([ch, ch.upper(), f"%{ord(ch):02X}", f"%{ord(ch):02x}"][pick % 4])
        else:
            out.append(ch)
    return "".join(out) + ["", "/", "/.", "//"][choices[0] % 4 if choices else 0]


@given(st.sampled_from(_ROUTES), st.lists(st.integers(0, 27), max_size=12))
def test_a_route_spelled_any_way_is_judged_as_the_route(route: tuple[Family, str, str], choices: list[int]) -> None:
    family, method, path = route
    provider, tail = split_provider("/p" + _respell(path, choices))
    assert provider == "p"
    assert classify(family, method, tail) == classify(family, method, path)
    assert tail.lower() == path.lower()  # and forwarded as the route, case aside
