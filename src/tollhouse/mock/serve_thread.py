"""Run an aiohttp application on a free local port in a background thread.

Meant for synchronous tests and benchmarks::

    with ThreadedServer(lambda: build_mock_app(MockSettings())) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test")
        ...
        server.app[MOCK_STATS]  # the running application

The thread runs a plain asyncio event loop of its own; the factory is called
inside it, so the application is created on the loop that serves it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from types import TracebackType

from aiohttp import web

__all__ = ["ThreadedServer"]


class ThreadedServer:
    """An aiohttp application served from a daemon thread; a context manager.

    ``start()`` returns the base URL (``http://127.0.0.1:PORT``, no trailing slash);
    ``stop()`` shuts the application down gracefully and joins the thread. Using
    the object in a ``with`` statement starts it on entry (yielding the server
    itself; see :attr:`url` and :attr:`app`) and stops it on exit.
    """

    def __init__(
        self,
        factory: Callable[[], web.Application],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        shutdown_timeout: float = 2.0,
        startup_timeout: float = 10.0,
    ) -> None:
        self._factory = factory
        self._host = host
        self._port = port
        self._shutdown_timeout = shutdown_timeout
        self._startup_timeout = startup_timeout
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._app: web.Application | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. ``http://127.0.0.1:54321``."""
        if self._url is None:
            raise RuntimeError("server is not running")
        return self._url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def app(self) -> web.Application:
        """The application being served (created by the factory in the server thread)."""
        if self._app is None:
            raise RuntimeError("server is not running")
        return self._app

    def start(self) -> str:
        """Start serving; returns the base URL once the socket is listening."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="tollhouse-threaded-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._startup_timeout):
            raise RuntimeError("server did not start in time")
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError("server failed to start") from self._error
        return self.url

    def stop(self) -> None:
        """Shut the server down and wait for its thread; a no-op when not running."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop_event.set)
        thread.join(self._shutdown_timeout + 10.0)
        self._thread = None
        self._url = None

    def __enter__(self) -> ThreadedServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start(); the thread must not die silently
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        app = self._factory()
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
            host, port = runner.addresses[0][:2]
            url_host = f"[{host}]" if ":" in host else host
            self._app = app
            self._url = f"http://{url_host}:{port}"
            self._ready.set()
            await self._stop_event.wait()
        finally:
            await runner.cleanup()
