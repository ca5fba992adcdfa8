"""The client side: one pooled HTTP client per provider (pyreqwest, Rust reqwest under asyncio).

Chosen by measurement over aiohttp's client (benchmarks/README.md). Responses are never decoded
(we ask for identity encoding), redirects are not followed and no cookies are kept: a gateway must
not carry one user's cookies into another user's call.
"""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import unquote, urlsplit, urlunsplit

from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import ConnectError, ConnectTimeoutError, RequestError, RequestTimeoutError
from pyreqwest.proxy import ProxyBuilder

__all__ = ["ConnectError", "ConnectTimeoutError", "RequestError", "RequestTimeoutError", "build_client"]


def _proxy(url: str) -> ProxyBuilder:
    parts = urlsplit(url)
    bare = urlunsplit((parts.scheme, parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname
                       else "", parts.path, "", ""))
    proxy = ProxyBuilder.all(bare)
    if parts.username is not None:
        proxy = proxy.basic_auth(unquote(parts.username), unquote(parts.password or ""))
    return proxy


def build_client(read_timeout_s: float, upstream_proxy: str | None, extra_root_pem: bytes | None = None) -> Client:
    """extra_root_pem: a CA certificate (PEM) trusted besides the system's, e.g. a private control plane's."""
    builder = (
        ClientBuilder()
        .gzip(False).brotli(False).zstd(False).deflate(False)
        .follow_redirects(False)
        .default_cookie_store(False)
        .error_for_status(False)
        .connect_timeout(timedelta(seconds=10))
        .read_timeout(timedelta(seconds=read_timeout_s))
        .pool_idle_timeout(timedelta(seconds=60))
    )
    # The only proxy is the configured one: never HTTP(S)_PROXY from the environment.
    builder = builder.proxy(_proxy(upstream_proxy)) if upstream_proxy else builder.no_proxy()
    if extra_root_pem is not None:
        builder = builder.add_root_certificate_pem(extra_root_pem)
    return builder.build()
