"""The stdio session of ``thinktank mcp``: the app built in this process, started and stopped around one MCP
session on stdin and stdout, acting as the user of one key.

The app is the one ``thinktank serve`` runs (the same settings, configuration and data directory) with its
own start and stop (its lifespan: migrations, background writers, runs cancelled and recorded at the end);
there is no HTTP server. stdout carries the protocol and nothing else: logs go to stderr.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcp.server.stdio import stdio_server

from .caller import Caller
from .server import build_server

if TYPE_CHECKING:
    from ..accounts.principal import Principal
    from ..api.app import ThinktankApp

__all__ = ["LOCAL_ADDRESS", "serve_stdio"]

LOCAL_ADDRESS = "stdio"
"""The caller's address, for the throttle of failed key lookups (a stdio session has no network address)."""


async def serve_stdio(app: ThinktankApp, key: str) -> None:
    """Start ``app``, check ``key`` (an :class:`~thinktank.errors.AuthenticationError` before anything is
    served), answer MCP on stdin/stdout until stdin closes, then stop ``app``. The key is looked up again for
    every request (cached for ``auth_cache_ttl``), so one revoked meanwhile stops working."""
    fastapi = app.fastapi
    state = app.state
    async with fastapi.router.lifespan_context(fastapi):

        async def principal() -> Principal:
            return await state.authenticate(key, LOCAL_ADDRESS)

        await principal()
        server = build_server(Caller(state, principal, None))
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
