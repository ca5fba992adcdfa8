"""A real OpenID Connect provider for the console's sign-in tests: oidc-provider-mock (an Authlib authorization
server on Flask: discovery, JWKS, authorization code grant, RS256-signed ID tokens with nonce, userinfo), served by
werkzeug on 127.0.0.1, port 0, in a thread.

Its authorization code grant has no PKCE extension, so a WSGI layer in front of it does what RFC 7636 4.6 asks of
the server: it keeps the code_challenge of each authorization request with the code issued, and refuses a token
request whose code_verifier does not hash to it (or that sends none).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import oidc_provider_mock
import werkzeug.serving

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]


@dataclass
class Pkce:
    """The PKCE check in front of the provider; `refused` counts token requests it turned away."""

    app: WsgiApp
    challenges: dict[str, str] = field(default_factory=dict)  # code -> S256 code_challenge
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/oauth2/token" and environ.get("REQUEST_METHOD") == "POST":
            size = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(size)
            environ["wsgi.input"] = io.BytesIO(body)
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            with self.lock:
                challenge = self.challenges.pop(form.get("code", ""), None)
            verifier = form.get("code_verifier", "")
            computed = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
            if challenge is not None and computed != challenge:
                with self.lock:
                    self.refused += 1
                start_response("400 Bad Request", [("Content-Type", "application/json")])
                return [json.dumps({"error": "invalid_grant", "error_description": "PKCE verification failed: "
                                    "code_verifier does not match the code_challenge"}).encode()]
        if path != "/oauth2/authorize":
            return self.app(environ, start_response)
        challenge = parse_qs(environ.get("QUERY_STRING", "")).get("code_challenge", [""])[0]

        def remember(status: str, headers: list[tuple[str, str]], *rest: Any) -> Any:
            location = dict((k.lower(), v) for k, v in headers).get("location", "")
            code = parse_qs(urlsplit(location).query).get("code", [""])[0]
            if code and challenge:
                with self.lock:
                    self.challenges[code] = challenge
            return start_response(status, headers, *rest)

        return self.app(environ, remember)


@dataclass
class OidcProvider:
    url: str
    pkce: Pkce

    def set_user(self, sub: str, claims: dict[str, Any]) -> None:
        """The claims the provider puts in `sub`'s ID token (email, name, groups, ...)."""
        req = urllib.request.Request(f"{self.url}/users/{quote(sub, safe='')}", data=json.dumps(claims).encode(),
                                     method="PUT", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 204

    def authorize(self, authorization_url: str, sub: str) -> str:
        """The person `sub` approves the sign-in on the provider's form: the URL it sends the browser back to."""
        assert authorization_url.startswith(self.url + "/oauth2/authorize?"), authorization_url
        req = urllib.request.Request(authorization_url, data=f"sub={quote(sub)}".encode(), method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        opener = urllib.request.build_opener(_NoRedirect())
        with opener.open(req, timeout=10) as resp:
            assert resp.status in (302, 303), resp.read()
            location: str = resp.headers["location"]
        return location


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None

    def http_error_302(self, req: Any, fp: Any, code: int, msg: str, headers: Any) -> Any:
        return fp

    http_error_303 = http_error_302


@contextmanager
def oidc_provider() -> Iterator[OidcProvider]:
    """The provider, listening on 127.0.0.1 (a free port) until the block ends. It requires a nonce."""
    pkce = Pkce(oidc_provider_mock.app(require_nonce=True))
    server = werkzeug.serving.make_server("127.0.0.1", 0, pkce, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield OidcProvider(f"http://127.0.0.1:{server.server_port}", pkce)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
