"""Every request under `/{provider}/` falls in one class: metered, governed, free or unknown.

- metered: its model, usage and cost are read from the call (chat, completions, embeddings, responses,
  messages, generateContent and its stream).
- governed: it can make the provider spend (images, audio, batches, fine-tuning, realtime, assistants
  runs, cached contents, ...): judged on the models it names, reserved at worst case.
- free: it cannot (list and retrieve, delete, cancel, count tokens, moderations, file uploads).
- unknown: anything else; refused while enforcing if it carries a body, unless configured as passthrough.

Paths are matched on their normalised form (providers/paths.py) by suffix, so a base path in front of the
API's own (Azure's `/openai/deployments/{d}/...`, Groq's `/openai/v1/...`) classifies like the API path,
and case-insensitively: a server that ignores case gets the same judgement as one that does not, and one
that does not answers 404 without spending. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from tollhouse.providers.base import Endpoint
from tollhouse.providers.family import Family


class EndpointClass(StrEnum):
    metered = "metered"
    governed = "governed"
    free = "free"
    unknown = "unknown"


@dataclass(frozen=True, slots=True)
class Route:
    endpoint_class: EndpointClass
    endpoint: Endpoint

    @property
    def metered(self) -> bool:
        return self.endpoint_class is EndpointClass.metered


UNKNOWN = Route(EndpointClass.unknown, Endpoint.passthrough)
FREE = Route(EndpointClass.free, Endpoint.passthrough)

_M, _G, _F = EndpointClass.metered, EndpointClass.governed, EndpointClass.free
# Methods that never make a provider spend on a resource the family knows (websockets are rules above).
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})

# (method, path suffix with '*' for any one segment, class, endpoint); the longest matching suffix wins.
_Rule = tuple[str, str, EndpointClass, Endpoint]

_OPENAI: tuple[_Rule, ...] = (
    ("POST", "chat/completions", _M, Endpoint.chat),
    ("POST", "completions", _M, Endpoint.completions),
    ("POST", "embeddings", _M, Endpoint.embeddings),
    ("POST", "responses", _M, Endpoint.responses),
    ("POST", "images/generations", _G, Endpoint.images),
    ("POST", "images/edits", _G, Endpoint.images),
    ("POST", "images/variations", _G, Endpoint.images),
    ("POST", "audio/speech", _G, Endpoint.audio_speech),
    ("POST", "audio/transcriptions", _G, Endpoint.audio_transcription),
    ("POST", "audio/translations", _G, Endpoint.audio_transcription),
    ("POST", "batches", _G, Endpoint.batches),
    ("POST", "fine_tuning/jobs", _G, Endpoint.fine_tuning),
    ("POST", "fine_tuning/jobs/*/resume", _G, Endpoint.fine_tuning),
    ("POST", "fine_tuning/alpha/graders/run", _G, Endpoint.fine_tuning),
    ("POST", "realtime", _G, Endpoint.realtime),
    ("GET", "realtime", _G, Endpoint.realtime),  # the websocket upgrade
    ("POST", "realtime/sessions", _G, Endpoint.realtime),  # ephemeral keys spend without passing us
    ("POST", "realtime/transcription_sessions", _G, Endpoint.realtime),
    ("POST", "realtime/client_secrets", _G, Endpoint.realtime),
    ("POST", "realtime/calls", _G, Endpoint.realtime),
    ("POST", "threads/runs", _G, Endpoint.assistants_run),
    ("POST", "threads/*/runs", _G, Endpoint.assistants_run),
    ("POST", "threads/*/runs/*/submit_tool_outputs", _G, Endpoint.assistants_run),
    ("POST", "videos", _G, Endpoint.videos),
    ("POST", "videos/*/remix", _G, Endpoint.videos),
    ("POST", "evals/*/runs", _G, Endpoint.evals),
    ("POST", "containers", _G, Endpoint.containers),
    ("POST", "moderations", _F, Endpoint.moderations),
    ("POST", "responses/input_tokens", _F, Endpoint.count_tokens),
    ("POST", "responses/*/cancel", _F, Endpoint.passthrough),
    ("POST", "batches/*/cancel", _F, Endpoint.passthrough),
    ("POST", "fine_tuning/jobs/*/cancel", _F, Endpoint.passthrough),
    ("POST", "fine_tuning/jobs/*/pause", _F, Endpoint.passthrough),
    ("POST", "threads/*/runs/*/cancel", _F, Endpoint.passthrough),
    ("POST", "evals/*/runs/*/cancel", _F, Endpoint.passthrough),
    ("POST", "files", _F, Endpoint.passthrough),
    ("POST", "uploads", _F, Endpoint.passthrough),
    ("POST", "uploads/*/parts", _F, Endpoint.passthrough),
    ("POST", "uploads/*/complete", _F, Endpoint.passthrough),
    ("POST", "uploads/*/cancel", _F, Endpoint.passthrough),
)
# GET / HEAD / OPTIONS / DELETE under these collections is free (lists, retrieves, file contents, deletes).
_OPENAI_RESOURCES = frozenset({
    "models", "files", "batches", "responses", "chat", "completions", "fine_tuning", "assistants", "threads",
    "vector_stores", "uploads", "videos", "conversations", "containers", "evals", "deployments", "images",
})

_ANTHROPIC: tuple[_Rule, ...] = (
    ("POST", "messages", _M, Endpoint.messages),
    ("POST", "messages/batches", _G, Endpoint.message_batches),
    ("POST", "complete", _G, Endpoint.complete),
    ("POST", "messages/count_tokens", _F, Endpoint.count_tokens),
    ("POST", "messages/batches/*/cancel", _F, Endpoint.passthrough),
    ("POST", "files", _F, Endpoint.passthrough),
)
_ANTHROPIC_RESOURCES = frozenset({"models", "messages", "files", "organizations"})

_GEMINI: tuple[_Rule, ...] = (
    ("POST", "cachedcontents", _G, Endpoint.cached_contents),
    ("PATCH", "cachedcontents/*", _G, Endpoint.cached_contents),  # a longer TTL is more storage to pay
    ("POST", "tunedmodels", _G, Endpoint.fine_tuning),
    ("POST", "files", _F, Endpoint.passthrough),
)
# Gemini names the method after a colon: models/{model}:generateContent.
_GEMINI_ACTIONS: dict[str, tuple[EndpointClass, Endpoint]] = {
    "generatecontent": (_M, Endpoint.generate),
    "streamgeneratecontent": (_M, Endpoint.stream_generate),
    "batchgeneratecontent": (_G, Endpoint.batch_generate),
    "embedcontent": (_G, Endpoint.embed_content),
    "batchembedcontents": (_G, Endpoint.batch_embed),
    "asyncbatchembedcontent": (_G, Endpoint.batch_embed),
    "predict": (_G, Endpoint.predict),
    "predictlongrunning": (_G, Endpoint.predict),
    "generateanswer": (_G, Endpoint.answer),
    "counttokens": (_F, Endpoint.count_tokens),
    "cancel": (_F, Endpoint.passthrough),
}
_GEMINI_RESOURCES = frozenset({"models", "tunedmodels", "cachedcontents", "files", "batches", "operations",
                               "corpora", "filesearchstores", "generatedfiles"})


_Index = dict[tuple[str, str], tuple[tuple[tuple[str, ...], Route], ...]]


def _compile(rules: tuple[_Rule, ...]) -> tuple[_Index, tuple[tuple[str, tuple[str, ...], Route], ...]]:
    """Rules indexed by (method, last segment), the longest suffix first; those ending in '*' apart."""
    index: dict[tuple[str, str], list[tuple[tuple[str, ...], Route]]] = {}
    wild: list[tuple[str, tuple[str, ...], Route]] = []
    for method, suffix, cls, endpoint in rules:
        parts = tuple(suffix.split("/"))
        if parts[-1] == "*":
            wild.append((method, parts, Route(cls, endpoint)))
        else:
            index.setdefault((method, parts[-1]), []).append((parts, Route(cls, endpoint)))
    return ({key: tuple(sorted(found, key=lambda r: -len(r[0]))) for key, found in index.items()},
            tuple(sorted(wild, key=lambda r: -len(r[1]))))


_TABLES = {
    Family.openai: (*_compile(_OPENAI), _OPENAI_RESOURCES),
    Family.anthropic: (*_compile(_ANTHROPIC), _ANTHROPIC_RESOURCES),
    Family.gemini: (*_compile(_GEMINI), _GEMINI_RESOURCES),
}


def _suffix_matches(parts: list[str], suffix: tuple[str, ...]) -> bool:
    n = len(suffix)
    if n > len(parts):
        return False
    offset = len(parts) - n
    for i in range(n):
        want = suffix[i]
        if want != "*" and want != parts[offset + i]:
            return False
    return True


def classify(family: Family, method: str, path: str) -> Route:
    """The class and endpoint of `method path`, where path is normalised (paths.normalise_path or the tail
    split_provider gives)."""
    method = method.upper()
    parts = path.lower().strip("/").split("/")
    if family is Family.gemini:
        found = _gemini_action(method, parts)
        if found is not None:
            return found
    index, wild, resources = _TABLES[family]
    for suffix, route in index.get((method, parts[-1]), ()):
        if _suffix_matches(parts, suffix):
            return route
    for rule_method, suffix, route in wild:
        if rule_method == method and _suffix_matches(parts, suffix):
            return route
    if method in _READ_METHODS and not resources.isdisjoint(parts):
        return FREE
    return UNKNOWN


def _gemini_action(method: str, parts: list[str]) -> Route | None:
    last = parts[-1]
    if "bidigeneratecontent" in last:  # the Live API's websocket: ws/...GenerativeService.BidiGenerateContent
        return Route(_G, Endpoint.realtime)
    if ":" not in last or method != "POST":
        return None
    found = _GEMINI_ACTIONS.get(last.rpartition(":")[2])
    return Route(*found) if found is not None else None


def metered_endpoint(family: Family, method: str, path: str) -> Endpoint:
    """The metered endpoint of a request, or Endpoint.passthrough (what ProviderProtocol.classify gives)."""
    route = classify(family, method, path)
    return route.endpoint if route.metered else Endpoint.passthrough


def passthrough_allows(patterns: tuple[str, ...], path: str) -> bool:
    """Whether a normalised path is one the config lets through although its class is unknown
    (`providers.NAME.passthrough`: normalised paths, '*' for any one segment; case-sensitive)."""
    if not patterns:
        return False
    parts = path.split("/")
    for pattern in patterns:
        want = pattern.split("/")
        if len(want) == len(parts) and all(w == "*" or w == p for w, p in zip(want, parts, strict=True)):
            return True
    return False
