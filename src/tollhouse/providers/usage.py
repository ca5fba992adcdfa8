"""Token usage as read from a provider response, in one shape for every family."""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple


class UsageSource(StrEnum):
    response = "response"  # the provider's own usage report
    partial = "partial"  # the provider's report, as far as the stream got before it ended
    estimate = "estimate"  # no report: estimated from the bytes seen
    none = "none"  # nothing to meter (error, unmetered route)
    unparsed = "unparsed"  # the request or response could not be parsed
    # the worst case the call reserved: its answer tells no usage (governed endpoints, background calls), or
    # it was forwarded and never finished (the gateway was killed)
    reserved = "reserved"


class Usage(NamedTuple):
    """Input tokens include cached ones (`cache_read_tokens` and `cache_write_tokens` are parts of it).
    (A tuple: one or two are built per call.)"""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


def as_int(value: object) -> int:
    """A token count from JSON: ints only, anything else counts as zero."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
