"""Signing in to the console as a role in tests: a session cookie built like gateway/console_session does
(the same cookie single sign-on and the admin-token sign-in set; it works on /console/ and /api/v1/). The
signature is shared by every console test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

SESSION_S = 12 * 3600


def role_cookie(admin_token: str, name: str, role: str, now: float | None = None, session_id: str | None = None
                ) -> str:
    """"tollhouse_console=<value>": a session for `name` with `role`, valid 12 hours from `now` (default: now). The
    same arguments within one second give the same cookie (its CSRF token is the same), unless `session_id` is
    given: a session of its own."""
    issued = int(time.time() if now is None else now)
    encoded = base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")
    sid = session_id or hashlib.sha256(f"{name}\0{role}\0{issued}".encode()).hexdigest()[:16]
    payload = f"{issued + SESSION_S}.{role}.{encoded}.{issued * 1000}.{sid}"
    signature = hmac.new(admin_token.encode(), b"tollhouse-console-session\0" + payload.encode(),
                         hashlib.sha256).hexdigest()
    return f"tollhouse_console={payload}.{signature}"
