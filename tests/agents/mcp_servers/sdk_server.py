"""An MCP server built with the SDK's ``MCPServer`` (it speaks 2026-07-28, and 2025-11-25 to older clients):
tools that change the tool list at run time, sleep, crash, and show the request's headers.

Run as ``python sdk_server.py`` (stdio) or ``python sdk_server.py http PORT`` (streamable HTTP on
127.0.0.1:PORT/mcp)."""

from __future__ import annotations

import os
import sys

import anyio
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("sdk-test-server")


def extra(text: str) -> str:
    """A tool added at run time."""
    return f"extra: {text}"


def quiet(text: str) -> str:
    """A tool added without a notification."""
    return f"quiet: {text}"


@server.tool()
async def grow(ctx: Context) -> str:
    """Adds the tool 'extra' and says the tools changed."""
    server.add_tool(extra)
    await ctx.notify_tools_changed()  # to subscriptions/listen streams (2026-07-28)
    await ctx.session.send_tool_list_changed()  # on the session (2025-11-25)
    return "grown"


@server.tool()
def grow_quietly() -> str:
    """Adds the tool 'quiet' without saying so."""
    server.add_tool(quiet)
    return "grown quietly"


@server.tool()
def pid() -> int:
    """The server's process id."""
    return os.getpid()


@server.tool()
async def sleep(seconds: float) -> str:
    """Sleeps, then answers."""
    await anyio.sleep(seconds)
    return f"slept {seconds} s"


@server.tool()
async def wait_for(path: str) -> str:
    """Answers once the file ``path`` exists."""
    while not await anyio.Path(path).exists():
        await anyio.sleep(0.02)
    return f"found {path}"


@server.tool()
def crash() -> str:
    """Exits in the middle of the call."""
    os._exit(3)


@server.tool()
def headers(ctx: Context) -> dict[str, str]:
    """The HTTP headers of this request."""
    return dict(ctx.headers or {})


if __name__ == "__main__":
    if sys.argv[1:2] == ["http"]:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
