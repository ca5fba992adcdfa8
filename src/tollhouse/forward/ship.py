"""An agent's forward-proxy hosts, reported to its control plane (`POST /api/v1/agent/hosts`).

The agent's own store holds its running totals per host and person; every `interval_s` the rows seen since the
last accepted report are sent (all of them after a start). The control plane replaces the agent's rows with
them, so a report sent twice, or lost and sent again, counts once; nothing is lost across restarts.
"""

from __future__ import annotations

import asyncio
import logging

import orjson

from tollhouse.agent.backoff import Backoff
from tollhouse.agent.control_request import control_post
from tollhouse.events.store import StoreError
from tollhouse.events.writer import StoreRunner
from tollhouse.forward.hosts import own_hosts_since
from tollhouse.gateway.upstream import RequestError, build_client

log = logging.getLogger("tollhouse.agent")
HOSTS_PATH = "/api/v1/agent/hosts"
BATCH = 1000


class HostReporter:
    def __init__(self, runner: StoreRunner, control_plane_url: str, token: str, agent_id: str, proxy: str | None,
                 interval_s: float = 60.0, timeout_s: float = 10.0) -> None:
        self._runner = runner
        self._url = control_plane_url.rstrip("/") + HOSTS_PATH
        self._token, self._agent_id = token, agent_id
        self._client = build_client(timeout_s, proxy)
        self.interval_s = interval_s
        self.since_ms = 0  # rows seen at or after this are (re)sent
        self.reported = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tollhouse-agent-hosts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._client.close()

    def health(self) -> dict[str, object]:
        return {"reported": self.reported, "since_ms": self.since_ms, "last_error": self.last_error}

    async def _run(self) -> None:
        backoff = Backoff(1.0, 300.0)
        wait = self.interval_s
        while True:
            await asyncio.sleep(wait)
            if await self.report_once():
                backoff.reset()
                wait = self.interval_s
            else:
                wait = backoff.next()

    async def report_once(self) -> bool:
        """Send what changed since the last accepted report; True when all of it was accepted (or nothing
        changed)."""
        while True:
            try:
                rows = await self._runner.run(lambda s: own_hosts_since(s, self.since_ms, BATCH))
            except StoreError as exc:
                self.last_error = str(exc)
                return False
            if not rows:
                return True
            body = orjson.dumps({"hosts": [r._asdict() for r in rows]})
            request = control_post(self._client, self._url, self._token, self._agent_id, body)
            try:
                response = await request.send()
                await response.bytes()
            except RequestError as exc:
                self.last_error = exc.message
                log.info("forward-proxy hosts not reported yet: %s", exc.message)
                return False
            if response.status != 200:
                self.last_error = f"HTTP {response.status}"
                log.warning("the control plane did not take the forward-proxy hosts report (HTTP %d); retrying",
                            response.status)
                return False
            self.reported += len(rows)
            self.last_error = None
            newest = rows[-1].last_ms
            if len(rows) < BATCH or newest == self.since_ms:
                # (rows seen in the newest millisecond are sent again next time: harmless, the report replaces)
                self.since_ms = newest
                return True
            self.since_ms = newest
