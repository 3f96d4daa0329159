"""The tools of the configured MCP servers, as agents' :class:`~.tools.Tool` objects.

:class:`McpClients` holds one connection per MCP server of the configuration's ``mcp_servers:`` list: a stdio
server's process, or a streamable HTTP or SSE session. A connection is made on first use, shared by every run
and call that needs it, and made again on the next use after it broke (the server exited, hung past its
timeout or sent something that is not MCP). A server's tools are listed once per connection and listed again
when the server says they changed (``notifications/tools/list_changed``).

Only configured servers are ever contacted: every method takes the *name* of a server of the configuration,
and the command line, environment, working directory, URL and headers come from its
:class:`~.config.McpServerConfig` alone. Nothing from a request (an agent's arguments, a model's tool call, a
user's settings) can name a command, a URL or a header. A stdio server's environment is its configured
``env`` over the MCP SDK's short list of safe variables (``PATH``, ``HOME``, ``USER``, ``LOGNAME``, ``SHELL``,
``TERM``): none of thinktank's own settings or keys.

One :class:`McpClients` serves one event loop; :meth:`McpClients.close` must be awaited at shutdown (it
stops every server process and waits until they are gone).

The MCP SDK (``mcp``) is imported only when a first connection is made (:mod:`.mcp_connection`), so importing
this module is cheap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, ThinktankError
from .tools import Tool, ToolContext, ToolError, ToolOutput, ToolSpec

if TYPE_CHECKING:
    from ..clock import Clock
    from .config import McpServerConfig
    from .mcp_connection import Connection

__all__ = ["RETRY_AFTER", "McpClients", "McpServerError", "McpTool"]

log = logging.getLogger("thinktank.agents.mcp")

RETRY_AFTER = 10.0
"""Seconds after a failed connection attempt during which a server is reported unavailable without trying
again (so each run does not wait out the same connect timeout)."""


class McpServerError(ThinktankError):
    """An MCP server could not be reached or did not list its tools."""

    status = 502
    type = "upstream_error"
    code = "mcp_server_unavailable"

    def __init__(self, message: str, *, server: str) -> None:
        super().__init__(message)
        self.server = server


class McpTool:
    """One tool of an MCP server, as an agent calls it (through the server's shared connection)."""

    def __init__(self, clients: McpClients, spec: ToolSpec, tool: str) -> None:
        self._clients = clients
        self._spec = spec
        self.tool = tool
        """The tool's name on its server (``spec.name`` is the function name the model sees)."""

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    async def call(self, arguments: dict[str, Any], tc: ToolContext) -> ToolOutput:
        """Call the tool on its server; a failure of the server or of the call is a :class:`ToolError`."""
        assert self._spec.server is not None
        return await self._clients.call(self._spec.server, self.tool, arguments, time_limit=tc.time_limit)

    def __repr__(self) -> str:
        return f"McpTool({self._spec.qualified!r})"


class McpClients:
    """Connections to the configured MCP servers, made on first use and shared; :meth:`close` ends them."""

    def __init__(self, servers: Sequence[McpServerConfig], *, clock: Clock, retry_after: float = RETRY_AFTER) -> None:
        self._configs: dict[str, McpServerConfig] = {}
        for server in servers:
            if server.name in self._configs:
                raise ConfigError(f"mcp_servers: server '{server.name}' is configured twice")
            self._configs[server.name] = server
        self._clock = clock
        self._retry_after = retry_after
        self._current: dict[str, Connection] = {}
        """The connection each server's next call uses."""
        self._open: set[Connection] = set()
        """Every connection not yet closed, retired ones that finish their calls included."""
        self._locks: dict[str, asyncio.Lock] = {}
        self._failures: dict[str, tuple[float, str]] = {}
        """A server's last failed connection attempt: when (monotonic) and why."""
        self._closed = False

    @property
    def servers(self) -> tuple[str, ...]:
        """The configured servers' names."""
        return tuple(self._configs)

    def config(self, server: str) -> McpServerConfig:
        """The configuration of ``server``; :class:`ConfigError` if it is not configured."""
        try:
            return self._configs[server]
        except KeyError:
            known = ", ".join(sorted(self._configs)) or "none"
            raise ConfigError(f"MCP server '{server}' is not configured (mcp_servers: {known})") from None

    async def tools(self, server: str) -> list[Tool]:
        """The tools of ``server`` (only those its ``tools`` list names, when it has one).

        Raises :class:`McpServerError` when the server cannot be reached or does not list its tools, and
        :class:`ConfigError` for a server that is not configured.
        """
        conn = await self._connection(server)
        specs = await conn.tools()
        return [McpTool(self, spec, tool) for tool, spec in specs]

    async def all_tools(self, servers: Iterable[str]) -> tuple[list[Tool], list[str]]:
        """The tools of several servers (asked at once), and one message per server that could not be used.

        A server that is unreachable (or not configured) does not fail the caller: its tools are missing and
        the message says why.
        """
        names = list(dict.fromkeys(servers))
        results = await asyncio.gather(*(self.tools(name) for name in names), return_exceptions=True)
        tools: list[Tool] = []
        problems: list[str] = []
        for result in results:
            if isinstance(result, ThinktankError):
                problems.append(result.message)
            elif isinstance(result, BaseException):
                raise result
            else:
                tools.extend(result)
        return tools, problems

    async def call(self, server: str, tool: str, arguments: dict[str, Any], *,
                   time_limit: float | None = None) -> ToolOutput:
        """Call ``tool`` of ``server`` within the server's timeout (or ``time_limit`` seconds, if shorter).

        Every failure is a :class:`ToolError`: the server unreachable or not configured, the call refused, no
        answer in time, the server gone or answering something that is not MCP. After a timeout or a broken
        connection the next call connects again (calls under way on the old connection may finish first).
        """
        try:
            conn = await self._connection(server)
        except ThinktankError as exc:
            raise ToolError(exc.message) from None
        return await conn.call(tool, arguments, time_limit=time_limit)

    async def close(self) -> None:
        """End every connection and stop every stdio server process (waits until they are gone)."""
        self._closed = True
        conns = list(self._open)
        for conn in conns:
            conn.stop()
        await asyncio.gather(*(conn.wait_closed() for conn in conns))
        self._open.clear()
        self._current.clear()

    async def __aenter__(self) -> McpClients:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _connection(self, server: str) -> Connection:
        config = self.config(server)
        conn = self._current.get(server)
        if conn is not None and conn.usable:
            return conn
        lock = self._locks.setdefault(server, asyncio.Lock())
        async with lock:
            conn = self._current.get(server)
            if conn is not None and conn.usable:
                return conn
            if self._closed:
                raise McpServerError(f"MCP server '{server}' is unavailable: the MCP clients are closed",
                                     server=server)
            self._open = {c for c in self._open if not c.closed}
            failure = self._failures.get(server)
            if failure is not None:
                wait = failure[0] + self._retry_after - self._clock.monotonic()
                if wait > 0:
                    raise McpServerError(f"{failure[1]} (next attempt in {wait:.0f} s)", server=server)
            from .mcp_connection import Connection

            conn = Connection(config, clock=self._clock)
            self._open.add(conn)
            try:
                await conn.start()
            except McpServerError as exc:
                self._failures[server] = (self._clock.monotonic(), exc.message)
                raise
            self._failures.pop(server, None)
            if self._closed:
                conn.stop()
                raise McpServerError(f"MCP server '{server}' is unavailable: the MCP clients are closed",
                                     server=server)
            self._current[server] = conn
            log.info("connected to MCP server %s", server)
            return conn
