"""Reading the release index: an http(s):// URL (through the upstream proxy when one is set), a file:// URL
or an absolute path."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from pyreqwest.exceptions import PyreqwestError

from tollhouse.agent.releases import Release, ReleaseIndexError, parse_release_index
from tollhouse.control.agent_policy import redact_url
from tollhouse.gateway.upstream import build_client

MAX_INDEX_BYTES = 4 * 1024 * 1024


async def _get(url: str, proxy: str | None, timeout_s: float) -> bytes:
    client = build_client(timeout_s, proxy)
    try:
        response = await client.get(url).build().send()
        data = bytes(await response.bytes())
        status = response.status
    except PyreqwestError as exc:
        via = f" through the proxy {redact_url(proxy)}" if proxy else ""
        raise ReleaseIndexError(redact_url(url), [f"cannot be fetched{via}: {exc}"]) from None
    finally:
        await client.close()
    if status != 200:
        raise ReleaseIndexError(redact_url(url), [f"HTTP {status} (expected 200 with the JSON index)"])
    return data


def _read(path: Path, source: str) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(MAX_INDEX_BYTES + 1)
    except OSError as exc:
        raise ReleaseIndexError(source, [f"cannot be read: {exc.strerror or exc}"]) from None


async def fetch_releases(source: str, proxy: str | None, timeout_s: float = 30.0) -> list[Release]:
    """The releases listed at `source`; ReleaseIndexError names the source and what is wrong."""
    scheme = urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        raw = await _get(source, proxy, timeout_s)
    else:
        path = Path(url2pathname(urlsplit(source).path)) if scheme == "file" else Path(source)
        raw = await asyncio.to_thread(_read, path, source)
    if len(raw) > MAX_INDEX_BYTES:
        raise ReleaseIndexError(redact_url(source), [f"larger than {MAX_INDEX_BYTES} bytes"])
    return parse_release_index(raw, source)
