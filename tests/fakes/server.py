"""Run an ASGI app under a real uvicorn server, or an aiohttp app, on a free loopback port, inside the test's loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from aiohttp import web


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if task.done():
        task.result()
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def serve_aiohttp(app: web.Application, **runner: Any) -> tuple[web.AppRunner, str]:
    """``app`` served on a free loopback port: its runner (``cleanup()`` stops it) and ``http://127.0.0.1:<port>``.
    ``runner``: options of :class:`aiohttp.web.AppRunner` beside ``access_log=None``."""
    started = web.AppRunner(app, access_log=None, **runner)
    await started.setup()
    site = web.TCPSite(started, "127.0.0.1", 0)
    await site.start()
    server: Any = site._server
    return started, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
