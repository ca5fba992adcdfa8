"""What a subject or project id may look like when a caller names it (headers, the CLI, the exemption form).

At most 128 characters of printable ASCII without spaces: letters, digits and `. _ - @ + :` (enough for
user names, e-mail addresses, `service:name` and `key:` ids). Anything else is refused with a message
that says which rule was broken, before it can reach a budget counter, an event or the store.
"""

from __future__ import annotations

import re

MAX_SUBJECT_ID = 128
ALLOWED = "letters, digits and . _ - @ + :"
_VALID = re.compile(r"[A-Za-z0-9._\-@+:]+")


def valid_subject_id(value: str) -> str | None:
    """None when `value` is a valid id; else what is wrong with it (one sentence, without echoing it whole)."""
    if not value:
        return "it is empty"
    if len(value) > MAX_SUBJECT_ID:
        return f"it is {len(value)} characters long; at most {MAX_SUBJECT_ID} are allowed"
    if _VALID.fullmatch(value) is None:
        bad = next(c for c in value if _VALID.fullmatch(c) is None)
        return f"it contains {bad!r}; only {ALLOWED} are allowed (no spaces or control characters)"
    return None
