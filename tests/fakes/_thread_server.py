"""Run an aiohttp application on 127.0.0.1 in a background thread.

The fake services are used from plain synchronous tests (e.g. a Typer ``CliRunner``
test), from async tests running their own event loop, and from benchmarks. Serving
from a dedicated thread with its own event loop makes all three work the same way:
the server never depends on, or blocks, the caller's loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, Self

from aiohttp import web

#: How long, in seconds, ``stop()`` lets in-flight requests finish before cancelling them.
SHUTDOWN_TIMEOUT_S = 0.5


class ThreadedAiohttpServer:
    """Base class: an aiohttp app served from a background thread on an OS-assigned port.

    Subclasses implement :meth:`_build_app`. Recorded state should be guarded by
    ``self._lock`` because request handlers run in the server thread while tests read
    from theirs. The server can be started again after it was stopped (it gets a new
    port); recorded state is kept across restarts.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # -- to implement -------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        """Return the aiohttp application to serve (called in the server thread)."""
        raise NotImplementedError

    async def _on_shutdown(self) -> None:
        """Close long-lived connections (e.g. websockets) before the server stops."""

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the server listens on (only while started)."""
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._port

    @property
    def running(self) -> bool:
        """Whether the server thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Self:
        """Start serving in a background thread; return once the port is bound.

        Returns:
            The server itself, so ``fake = FakeX().start()`` works.
        """
        if self.running:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._serve, args=(ready, failure), name=f"{type(self).__name__}", daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise RuntimeError(f"{type(self).__name__} failed to start") from failure[0]
        return self

    def stop(self) -> None:
        """Stop the server, release its port and join its thread. Idempotent."""
        if self._thread is None:
            return
        loop = self._loop
        if loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            raise RuntimeError(f"{type(self).__name__} thread did not stop")
        self._thread = None
        self._port = None

    def run_in_loop(self, coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        """Run a coroutine in the server's event loop from another thread.

        Args:
            coro: The coroutine to run.
            timeout: Seconds to wait for its result.

        Returns:
            The coroutine's result.
        """
        if self._loop is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- server thread ------------------------------------------------------------------

    def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            try:
                loop.run_until_complete(self._startup())
            except BaseException as e:  # reported to start()
                failure.append(e)
                return
            finally:
                ready.set()
            loop.run_forever()
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._loop = None

    async def _startup(self) -> None:
        app = self._build_app()

        async def on_shutdown(_app: web.Application) -> None:
            await self._on_shutdown()

        app.on_shutdown.append(on_shutdown)
        # handler_cancellation: a client that disconnects cancels its handler, as it
        # would cancel the work on a real server.
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
            handler_cancellation=True,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
