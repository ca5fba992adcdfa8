"""Call events on the wire (agent telemetry → control plane): the stored columns as a JSON object, plus
the captured `prompt` and `response` text in enterprise capture mode (absent in telemetry mode).

Strictly typed: a batch with one bad event is refused whole, naming the event and the field, so a client
bug never stores half a batch or a silently coerced value; `BatchError.indices` lists every bad event, so
a sender can drop exactly those and send the rest again.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tollhouse.events.journal import PROVISIONAL
from tollhouse.events.model import MAX_CAPTURE_CHARS, CallEvent, Capture

MAX_BATCH = 5000
MAX_PROBLEMS = 20


class WireEvent(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=64)
    ts_ms: int = Field(ge=0)
    subject: str = Field(min_length=1, max_length=256)
    subject_kind: str = "employee"
    team: str | None = None
    project: str | None = None
    cost_centre: str | None = None
    provider: str
    endpoint: str = "chat"
    path: str = ""
    metered: bool = True
    model: str | None = None
    requested_model: str | None = None
    stream: bool = False
    status: int = Field(ge=0, le=599)  # 0 only for an unfinished call's intent (usage_source "reserved")
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cache_read_tokens: int = Field(default=0, ge=0)
    cache_write_tokens: int = Field(default=0, ge=0)
    cost_nusd: int | None = Field(default=None, ge=0)
    usage_source: str = "response"
    decision: str = Field(pattern="^(allow|warn|redirect|block)$")
    rule_id: str | None = None
    would: str | None = None
    latency_ms: float = Field(default=0.0, ge=0, strict=False)
    ttfb_ms: float | None = Field(default=None, ge=0, strict=False)
    client_disconnected: bool = False
    error: str | None = None
    endpoint_class: str = Field(default="metered", pattern="^(metered|governed|free|unknown)$")
    exemption_id: str | None = Field(default=None, min_length=1, max_length=1024)
    prompt: str | None = Field(default=None, max_length=MAX_CAPTURE_CHARS)
    response: str | None = Field(default=None, max_length=MAX_CAPTURE_CHARS)

    @model_validator(mode="after")
    def _status(self) -> WireEvent:
        if self.status < 100 and not (self.status == 0 and self.usage_source == PROVISIONAL):
            raise ValueError(f"status must be an HTTP status (100-599), or 0 with usage_source {PROVISIONAL!r} "
                             "(a call the gateway never saw finish)")
        return self


class WireBatch(NamedTuple):
    events: list[CallEvent]
    captures: dict[str, Capture]  # event id → captured content, for the events that carry some


class BatchError(ValueError):
    """problems: up to MAX_PROBLEMS messages naming the event and field; indices: every bad event (empty when
    the batch as a whole is wrong)."""

    def __init__(self, problems: list[str], indices: list[int] | None = None) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        self.indices = indices or []


def to_wire(event: CallEvent, capture: Capture | None = None) -> dict[str, Any]:
    out = event._asdict()
    if out["exemption_id"] is None:
        del out["exemption_id"]  # absent unless set: a control plane older than the field still takes the event
    if capture is not None:
        out.update((k, v) for k, v in capture._asdict().items() if v is not None)
    return out


def from_wire(batch: object) -> WireBatch:
    """A list of wire events; BatchError names the bad events (by index) and fields."""
    if not isinstance(batch, list):
        raise BatchError(['"events" must be a list of event objects'])
    if len(batch) > MAX_BATCH:
        raise BatchError([f"a batch holds at most {MAX_BATCH} events, got {len(batch)}; split it"])
    out = WireBatch([], {})
    problems: list[str] = []
    bad: list[int] = []
    for i, item in enumerate(batch):
        try:
            fields = WireEvent.model_validate(item).model_dump()
        except ValidationError as err:
            bad.append(i)
            for e in err.errors():
                field = ".".join(str(p) for p in e["loc"]) or "event"
                problems.append(f"events[{i}].{field}: {e['msg']}")
            continue
        captured = Capture(fields.pop("prompt"), fields.pop("response"))
        event = CallEvent(**fields)
        out.events.append(event)
        if captured.prompt is not None or captured.response is not None:
            out.captures[event.id] = captured
    if problems:
        raise BatchError(problems[:MAX_PROBLEMS], bad)
    return out
