"""Call events on the wire (agent telemetry → control plane): the stored columns as a JSON object.

Strictly typed: a batch with one bad event is refused whole, naming the event and the field, so a client
bug never stores half a batch or a silently coerced value.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tollhouse.events.model import CallEvent

MAX_BATCH = 5000


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
    status: int = Field(ge=100, le=599)
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


class BatchError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def to_wire(event: CallEvent) -> dict[str, Any]:
    return event._asdict()


def from_wire(batch: object) -> list[CallEvent]:
    """A list of wire events; BatchError names every bad event (by index) and field, up to 20."""
    if not isinstance(batch, list):
        raise BatchError(['"events" must be a list of event objects'])
    if len(batch) > MAX_BATCH:
        raise BatchError([f"a batch holds at most {MAX_BATCH} events, got {len(batch)}; split it"])
    out: list[CallEvent] = []
    problems: list[str] = []
    for i, item in enumerate(batch):
        try:
            out.append(CallEvent(**WireEvent.model_validate(item).model_dump()))
        except ValidationError as err:
            for e in err.errors():
                field = ".".join(str(p) for p in e["loc"]) or "event"
                problems.append(f"events[{i}].{field}: {e['msg']}")
        if len(problems) >= 20:
            break
    if problems:
        raise BatchError(problems)
    return out
