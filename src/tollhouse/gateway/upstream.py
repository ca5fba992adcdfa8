"""The agent's client for the control plane (bundle, telemetry, notices, release index): pyreqwest.

Off the request path (provider calls go through `tollhouse.wire.client`); it brings what those calls need
and the provider path does not: extra trusted roots for a private control plane. Redirects are not
followed and no cookies are kept.
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
