"""The identity headers a caller may send (X-Tollhouse-User, X-Tollhouse-Project), checked before use."""

from __future__ import annotations

from tollhouse.gateway.errors import error_response
from tollhouse.gateway.http import Response
from tollhouse.providers.family import Family
from tollhouse.subject_ids import valid_subject_id


def refuse(family: Family, header: str, value: str | None) -> Response | None:
    """A provider-shaped 400 naming the header and the rule when `value` is not a valid id; None otherwise."""
    if value is None:
        return None
    problem = valid_subject_id(value)
    if problem is None:
        return None
    return error_response(family, 400, f"Tollhouse refused the {header} header: {problem}. It must name a person, "
                          "service or project of the Tollhouse directory: at most 128 characters of letters, digits "
                          "and . _ - @ + : (no spaces or control characters).", "invalid_identity_header",
                          {"type": "invalid_request_error", "param": header})
