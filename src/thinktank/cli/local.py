"""``--local``: the real app, served on a loopback port from a thread of this process, for one command.

The app is the one ``thinktank serve`` runs (``create_app`` with this machine's settings, config and
data directory), under a real uvicorn server, with an admin key made for the occasion (neither stored
nor shown); the command talks to it over HTTP exactly as it would to a server elsewhere.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ThinktankError

if TYPE_CHECKING:
    import uvicorn

    from ..api.app import ThinktankApp
    from ..config import Settings

__all__ = ["LocalServer"]

T = TypeVar("T")

_START_TIMEOUT = 120.0
"""Seconds to wait for the app to start (the database is migrated first)."""


class LocalServer:
    """``with LocalServer(settings) as server:`` the app answers at ``server.url`` to ``server.key``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.key = "tt-local-" + secrets.token_urlsafe(32)
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self._serving: Future[None] | None = None
        self._app: ThinktankApp | None = None

    @property
    def app(self) -> ThinktankApp:
        assert self._app is not None, "the server is not started"
        return self._app

    def __enter__(self) -> LocalServer:
        import uvicorn

        from ..accounts.admin_key import AdminKey
        from ..api.app import create_app

        # Config errors surface here, before anything runs.
        self._app = create_app(self.settings, admin_key=AdminKey.of(self.key), quiet=True)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(self._app, lifespan="off", log_config=None, log_level="warning", access_log=False,
                                server_header=False, timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="thinktank-local", daemon=True)
        self._thread.start()
        self._serving = asyncio.run_coroutine_threadsafe(self._serve(sock), self._loop)
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._server.started and not self._serving.done():
            if time.monotonic() > deadline:
                self._close()
                raise ThinktankError(f"the server started in this process did not start within {_START_TIMEOUT:g} s")
            time.sleep(0.01)
        if self._serving.done():
            try:
                self._serving.result()
                raise ThinktankError("the server started in this process stopped at once")
            finally:
                self._close()
        return self

    async def _serve(self, sock: socket.socket) -> None:
        """The app's own start and stop (its lifespan) around uvicorn serving it: an error starting it (the
        database, say) is raised here, to the command, rather than logged by uvicorn."""
        assert self._app is not None
        assert self._server is not None
        fastapi = self._app.fastapi
        try:
            async with fastapi.router.lifespan_context(fastapi):
                await self._server.serve(sockets=[sock])
        finally:
            sock.close()

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the server's event loop (where its HTTP client and database live); its result."""
        assert self._loop is not None, "the server is not started"
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._server is not None:
            self._server.should_exit = True
        try:
            if self._serving is not None:
                self._serving.result(timeout=60)
        finally:
            self._close()

    def _close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not thread.is_alive():
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
