"""The bundle sync loop: long-poll the control plane's policy bundle, cache each new one on disk, apply it.

On start the cached bundle is applied first, so the agent enforces the last values it received across
restarts while the control plane is down; a failure never makes it fall back to more permissive defaults.
Unreachable control plane: retry with exponential backoff and jitter. 401 (token revoked or wrong): logged
loudly, shown in /healthz, retried slowly; the cached policy stays in force.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from pyreqwest.client import Client

from tollhouse.agent.backoff import Backoff
from tollhouse.agent.cache import BundleCache
from tollhouse.gateway.upstream import RequestError, build_client

log = logging.getLogger("tollhouse.agent")

BUNDLE_PATH = "/api/v1/agent/bundle"
Apply = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Retry:
    first_s: float = 0.5  # backoff with jitter after a failed poll: first_s, doubling up to max_s
    max_s: float = 30.0
    unauthorized_s: float = 60.0  # a rejected token is retried this often (it may be re-enabled)


class BundleSync:
    def __init__(self, control_plane: str, token: str, cache: BundleCache, apply: Apply,
                 agent_headers: dict[str, str], clock: Callable[[], float], wait_s: int = 30,
                 retry: Retry = Retry(), upstream_proxy: str | None = None,
                 live_headers: Callable[[], dict[str, str]] = dict) -> None:
        """`live_headers`: what the agent tells the control plane on each poll (its user, its enforcement)."""
        self._url = control_plane.rstrip("/") + BUNDLE_PATH
        self._headers = {"authorization": f"Bearer {token}", **agent_headers}
        self._live_headers = live_headers
        self._cache = cache
        self._apply = apply
        self._clock = clock
        self._wait_s = wait_s
        self._backoff = Backoff(retry.first_s, retry.max_s)
        self._unauthorized_s = retry.unauthorized_s
        self._client: Client = build_client(wait_s + 15.0, upstream_proxy)
        self._task: asyncio.Task[None] | None = None
        self.etag: str | None = None
        self.received_ms: int | None = None  # when the bundle in force was sent (survives restarts via the cache)
        self.last_contact_ms: int | None = None
        self.connected = False
        self.error: str | None = None
        self.cache_state = "none"  # none | loaded | corrupt
        self.failures = 0

    async def load_cached(self) -> None:
        """Apply the cached bundle, if there is a good one (call before serving)."""
        if not self._cache.path.exists():
            return
        cached = self._cache.load()
        if cached is None:
            self.cache_state = "corrupt"
            return
        self.cache_state = "loaded"
        await self._install(cached.bundle, cached.received_ms, save=False)
        log.info("applied the cached policy bundle %s (received %s)", self.etag, _iso(cached.received_ms))

    async def start(self, first_timeout_s: float = 3.0) -> None:
        """One quick poll first (a newly enrolled agent serves with its fleet's policy from the first call, not
        with defaults), then the long-poll loop."""
        delay = 0.0
        try:
            delay = await asyncio.wait_for(self.poll_once(), first_timeout_s)
        except TimeoutError:
            self._failed(f"the control plane at {self._url} did not answer within {first_timeout_s:g} s")
        self._task = asyncio.create_task(self._loop(delay), name="tollhouse-agent-bundle")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._client.close()

    async def _install(self, bundle: dict[str, Any], received_ms: int, save: bool) -> None:
        if save:
            await asyncio.to_thread(self._cache.save, bundle, received_ms)
        self.etag = str(bundle.get("etag") or "") or None
        self.received_ms = received_ms
        await self._apply(bundle)

    async def _loop(self, delay: float) -> None:
        await asyncio.sleep(delay)
        while True:
            delay = await self.poll_once()
            if delay:
                await asyncio.sleep(delay)

    async def poll_once(self) -> float:
        """One (long) poll; returns how long to wait before the next."""
        headers = {**self._headers, **self._live_headers()}
        wait = 0
        if self.etag is not None and self.connected:
            headers["if-none-match"] = self.etag
            wait = self._wait_s
        url = f"{self._url}?wait={wait}"
        try:
            response = await self._client.get(url).headers(headers).build().send()
            status, body = response.status, bytes(await response.bytes())
        except RequestError as exc:
            return self._failed(f"cannot reach the control plane at {self._url}: {exc}")
        now_ms = int(self._clock() * 1000)
        if status == 401:
            self.last_contact_ms = now_ms
            return self._unauthorized(body)
        if status == 304:
            self._contact(now_ms)
            return 0
        if status != 200:
            return self._failed(f"the control plane answered {status} to {BUNDLE_PATH}: {body[:200]!r}")
        try:
            bundle = orjson.loads(body)
        except orjson.JSONDecodeError:
            return self._failed("the control plane sent a bundle that is not JSON")
        if not isinstance(bundle, dict):
            return self._failed("the control plane sent a bundle that is not a JSON object")
        self._contact(now_ms)
        if bundle.get("etag") != self.etag:
            await self._install(bundle, now_ms, save=True)
            log.info("policy bundle %s from the control plane applied", self.etag)
        return 0

    def _contact(self, now_ms: int) -> None:
        if not self.connected:
            log.info("connected to the control plane at %s", self._url)
        self.connected, self.error, self.failures, self.last_contact_ms = True, None, 0, now_ms
        self._backoff.reset()

    def _failed(self, error: str) -> float:
        self.failures += 1
        if self.connected or self.failures == 1:
            log.warning("%s; keeping the policy in force (bundle %s) and retrying", error, self.etag or "none")
        self.connected, self.error = False, error
        return self._backoff.next()

    def _unauthorized(self, body: bytes) -> float:
        try:
            message = str(orjson.loads(body)["error"]["message"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            message = body[:200].decode(errors="replace")
        error = (f"the control plane REJECTED this agent's token (401): {message}. The agent keeps enforcing the "
                 f"last policy it received (bundle {self.etag or 'none'}); enroll it again with a valid token "
                 "(TOLLHOUSE_TOKEN in the managed file)")
        if self.error != error:
            log.error(error)
        self.connected, self.error = False, error
        self.failures += 1
        return self._unauthorized_s

    def health(self) -> dict[str, Any]:
        now_ms = int(self._clock() * 1000)
        if self.connected:
            state = "connected"
        elif self.received_ms is None and self.last_contact_ms is None:
            state = "never-connected"
        else:
            state = "offline"
        return {
            "state": state,
            "etag": self.etag,
            "last_contact": _iso(self.last_contact_ms),
            "bundle_age_s": None if self.received_ms is None else round((now_ms - self.received_ms) / 1000, 1),
            "cache": self.cache_state,
            "error": self.error,
            "running_on": "control-plane bundle" if self.received_ms is not None else "managed file and defaults",
        }


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")
