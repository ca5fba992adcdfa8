"""Notices an agent sends the control plane (update available / installed / failed): recorded in the
agent's own audit trail at once, and delivered to `POST /api/v1/agent/notices` in the background,
retried while the control plane is down (a small bounded queue; a drop is logged, never silent)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import orjson

from tollhouse.agent.backoff import Backoff
from tollhouse.agent.control_request import control_post
from tollhouse.audit.log import AuditLog
from tollhouse.gateway.upstream import RequestError, build_client

log = logging.getLogger("tollhouse.agent")
NOTICES_PATH = "/api/v1/agent/notices"
MAX_QUEUED = 100


class NoticeSender:
    def __init__(self, control_plane_url: str, token: str, agent_id: str, proxy: str | None, audit: AuditLog,
                 timeout_s: float = 10.0) -> None:
        self._url = control_plane_url.rstrip("/") + NOTICES_PATH
        self._token, self._agent_id, self._audit = token, agent_id, audit
        self._client = build_client(timeout_s, proxy)
        self._queue: deque[dict[str, Any]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.sent = 0

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        """The updater's `on_notice`: audit locally, queue for the control plane."""
        self._audit.record(kind, "agent", data)
        if len(self._queue) >= MAX_QUEUED:
            dropped = self._queue.popleft()
            log.warning("notice queue full: dropped the oldest (%s) undelivered", dropped["kind"])
        self._queue.append({"kind": kind, "data": data})
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tollhouse-agent-notices")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._client.close()

    async def _run(self) -> None:
        backoff = Backoff(1.0, 60.0)
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                if await self._send(self._queue[0]):
                    self._queue.popleft()
                    self.sent += 1
                    backoff.reset()
                else:
                    await asyncio.sleep(backoff.next())

    async def _send(self, notice: dict[str, Any]) -> bool:
        request = control_post(self._client, self._url, self._token, self._agent_id, orjson.dumps(notice))
        try:
            response = await request.send()
            await response.bytes()
        except RequestError as exc:
            log.info("notice %s not delivered yet: %s", notice["kind"], exc.message)
            return False
        if response.status == 200:
            return True
        if 400 <= response.status < 500:
            log.error("the control plane refused notice %s (HTTP %d); dropped", notice["kind"], response.status)
            return True
        return False
