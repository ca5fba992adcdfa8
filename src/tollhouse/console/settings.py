"""The `console:` section of the configuration: how long a sign-in lasts, single sign-on (OIDC), and who has
which role.

```yaml
console:
  session_hours: 12
  oidc:
    issuer: https://login.acme.example          # its /.well-known/openid-configuration is read
    client_id: tollhouse
    client_secret_env: TOLLHOUSE_OIDC_CLIENT_SECRET   # or client_secret: "..."
    scopes: [openid, email, profile]
    role_claim: tollhouse_role                  # optional: a claim that names the role itself
    groups_claim: groups                        # where "group:NAME" entries are looked up
  roles:
    admin: [ada@acme.example]
    policy_owner: ["group:ai-governance"]
    finance: ["group:finance", fred@acme.example]
    auditor: ["group:security"]
```
"""

from __future__ import annotations

import os
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

Role = Literal["admin", "policy_owner", "finance", "auditor"]
ROLE_ORDER: tuple[Role, ...] = ("admin", "policy_owner", "finance", "auditor")  # a user in several gets the first


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _http_url(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} {value!r} is not an http(s) URL; example: \"https://login.acme.example\"")
    return value.rstrip("/")


class OidcConfig(_Frozen):
    issuer: str
    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = None
    client_secret_env: str = "TOLLHOUSE_OIDC_CLIENT_SECRET"
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    role_claim: str | None = None  # a claim of the ID token naming the user's role (a string or a list)
    groups_claim: str = "groups"  # the claim listing the user's groups ("group:NAME" entries of console.roles)
    # The callback registered at the provider; default: this gateway's /console/login/sso/callback as the browser
    # reached it (the Host header).
    redirect_url: str = ""
    label: str = "Sign in with SSO"  # the sign-in page's button

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        return _http_url(value, "console.oidc.issuer")

    @field_validator("redirect_url")
    @classmethod
    def _redirect(cls, value: str) -> str:
        return _http_url(value, "console.oidc.redirect_url") if value else value

    @field_validator("scopes")
    @classmethod
    def _openid(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if "openid" not in value:
            raise ValueError("console.oidc.scopes must include \"openid\" (it asks for the ID token)")
        return value

    def secret(self) -> str | None:
        """The client secret: the environment variable named by client_secret_env first, then client_secret."""
        env = os.environ.get(self.client_secret_env)
        if env:
            return env
        return self.client_secret.get_secret_value() if self.client_secret else None


MAX_SESSION_HOURS = 24 * 31


class ConsoleConfig(_Frozen):
    session_hours: float = Field(default=12, gt=0, le=MAX_SESSION_HOURS)  # a sign-in lasts this long, then ends
    # wrong admin tokens an address may try within lockout_minutes before it may not try again for a while
    failed_sign_ins: int = Field(default=10, ge=1, le=10_000)
    lockout_minutes: float = Field(default=5, gt=0, le=24 * 60)
    oidc: OidcConfig | None = None  # single sign-on; the admin token sign-in always stays
    # role -> who has it: email addresses (case-insensitive) or "group:NAME" (from the ID token's groups claim)
    roles: dict[Role, tuple[str, ...]] = Field(default_factory=dict)

    @field_validator("roles")
    @classmethod
    def _entries(cls, value: dict[Role, tuple[str, ...]]) -> dict[Role, tuple[str, ...]]:
        for role, entries in value.items():
            for entry in entries:
                if entry.startswith("group:") and len(entry) > len("group:"):
                    continue
                if "@" not in entry:
                    raise ValueError(f"console.roles.{role}: {entry!r} is neither an email address nor "
                                     "\"group:NAME\"; example: [\"ada@acme.example\", \"group:finance\"]")
        return value
