"""The console's OpenID Connect client (Relying Party): the provider's discovery document and signing keys
(cached), the authorization URL (code flow with PKCE S256, state and nonce), the code exchange, and the ID token
check: signature against the provider's JWKS (joserfc), then issuer, audience, expiry, issue time, nonce and
at_hash (Authlib's CodeIDToken). Everything it refuses raises OidcError with a sentence for the person signing
in; nothing of the provider's answer is trusted before it passes.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import aiohttp
from authlib.common.security import generate_token
from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

_TIMEOUT = aiohttp.ClientTimeout(total=10)
_METADATA_TTL_S = 3600.0
_KEYS_REFRESH_S = 60.0  # an unknown key id fetches the JWKS again, at most this often
LEEWAY_S = 60  # clock skew allowed on exp, iat, nbf


class OidcError(Exception):
    """Single sign-on failed; the message says why, for the person signing in and the admin's log."""


@dataclass(frozen=True, slots=True)
class Provider:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    algorithms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Pending:
    """What the sign-in started with, kept (signed) in the browser until the provider sends it back."""

    state: str
    nonce: str
    verifier: str  # PKCE code_verifier
    redirect_uri: str
    next: str

    @staticmethod
    def new(redirect_uri: str, next_path: str) -> Pending:
        return Pending(generate_token(32), generate_token(32), generate_token(64), redirect_uri, next_path)


def authorization_url(provider: Provider, client_id: str, scopes: tuple[str, ...], pending: Pending) -> str:
    return str(add_params_to_uri(provider.authorization_endpoint, [
        ("response_type", "code"), ("client_id", client_id), ("redirect_uri", pending.redirect_uri),
        ("scope", " ".join(scopes)), ("state", pending.state), ("nonce", pending.nonce),
        ("code_challenge", create_s256_code_challenge(pending.verifier)), ("code_challenge_method", "S256")]))


async def _get_json(url: str, what: str) -> dict[str, Any]:
    try:
        async with aiohttp.ClientSession(timeout=_TIMEOUT) as session, session.get(url) as resp:
            if resp.status != 200:
                raise OidcError(f"the identity provider answered {resp.status} for its {what} ({url})")
            data = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise OidcError(f"could not read the identity provider's {what} at {url}: "
                        f"{exc or type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise OidcError(f"the identity provider's {what} at {url} is not a JSON object")
    return data


class OidcClient:
    """The provider's metadata and keys, cached per issuer (one per gateway: GatewayState.sso)."""

    def __init__(self) -> None:
        self._providers: dict[str, tuple[Provider, float]] = {}
        self._keys: dict[str, tuple[KeySet, float]] = {}

    async def provider(self, issuer: str, now: float) -> Provider:
        cached = self._providers.get(issuer)
        if cached is not None and now - cached[1] < _METADATA_TTL_S:
            return cached[0]
        meta = await _get_json(f"{issuer}/.well-known/openid-configuration", "discovery document")
        if str(meta.get("issuer", "")).rstrip("/") != issuer:
            raise OidcError(f"the discovery document of {issuer} names another issuer ({meta.get('issuer')!r}); "
                            "check console.oidc.issuer")
        try:
            provider = Provider(issuer, str(meta["authorization_endpoint"]), str(meta["token_endpoint"]),
                                str(meta["jwks_uri"]),
                                tuple(meta.get("id_token_signing_alg_values_supported") or ("RS256",)))
        except KeyError as exc:
            raise OidcError(f"the discovery document of {issuer} lacks {exc.args[0]}") from None
        self._providers[issuer] = (provider, now)
        return provider

    async def _key_set(self, provider: Provider, now: float, force: bool) -> KeySet:
        cached = self._keys.get(provider.jwks_uri)
        if cached is not None and (not force or now - cached[1] < _KEYS_REFRESH_S):
            return cached[0]
        data = await _get_json(provider.jwks_uri, "signing keys (JWKS)")
        try:
            keys = KeySet.import_key_set(data)  # type: ignore[arg-type]
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise OidcError(f"the identity provider's signing keys at {provider.jwks_uri} are unusable: "
                            f"{exc}") from None
        self._keys[provider.jwks_uri] = (keys, now)
        return keys

    async def exchange(self, provider: Provider, client_id: str, secret: str | None, code: str,
                       pending: Pending) -> dict[str, Any]:
        """The code (with the PKCE verifier) for the provider's tokens."""
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": pending.redirect_uri,
                "code_verifier": pending.verifier, "client_id": client_id}
        headers = {"accept": "application/json"}
        if secret is not None:  # client_secret_basic (RFC 6749 2.3.1)
            basic = base64.b64encode(f"{_form_encode(client_id)}:{_form_encode(secret)}".encode()).decode()
            headers["authorization"] = f"Basic {basic}"
        try:
            async with aiohttp.ClientSession(timeout=_TIMEOUT) as session, \
                    session.post(provider.token_endpoint, data=form, headers=headers) as resp:
                data = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise OidcError(f"could not exchange the code at {provider.token_endpoint}: "
                            f"{exc or type(exc).__name__}") from None
        if status != 200 or not isinstance(data, dict):
            error = data.get("error_description") or data.get("error") if isinstance(data, dict) else None
            raise OidcError(f"the identity provider refused the code ({status}: {error or 'no reason given'})")
        if not isinstance(data.get("id_token"), str):
            raise OidcError("the identity provider sent no ID token; is \"openid\" in console.oidc.scopes?")
        return data

    async def verify(self, provider: Provider, id_token: str, client_id: str, nonce: str,
                     access_token: str | None, now: float) -> dict[str, Any]:
        """The ID token's claims, once its signature (the provider's keys), issuer, audience, times, nonce and
        at_hash are right."""
        registry = JWSRegistry(algorithms=list(provider.algorithms))
        try:
            try:
                token = jwt.decode(id_token, await self._key_set(provider, now, False), registry=registry)
            except InvalidKeyIdError:  # the provider rotated its keys
                token = jwt.decode(id_token, await self._key_set(provider, now, True), registry=registry)
            params: dict[str, Any] = {"nonce": nonce, "client_id": client_id}
            if access_token:
                params["access_token"] = access_token
            claims = CodeIDToken(token.claims, token.header, {
                "iss": {"essential": True, "value": provider.issuer},
                "aud": {"essential": True, "value": client_id}}, params)
            claims.validate(now=int(now), leeway=LEEWAY_S)
        except (JoseError, ValueError) as exc:
            raise OidcError(f"the ID token was refused: {_describe(exc)}") from None
        return dict(token.claims)


def _describe(exc: Exception) -> str:
    description = getattr(exc, "description", None) or str(exc) or type(exc).__name__
    return str(description)


def _form_encode(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")
