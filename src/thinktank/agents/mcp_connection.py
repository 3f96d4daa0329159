"""One connection to one MCP server, held open by a task of its own (imported only when a first one is made).

The MCP SDK's sessions and transports are anyio task groups: they must be entered and left by one task. A
:class:`Connection` therefore runs a task that opens the transport and the session, announces it is ready,
and waits until it is told to end or the server goes away; calls and listings are sent from the callers'
tasks over the shared session (the SDK matches answers to requests), so concurrent calls share it.

A connection ends when the server closes it (a stdio server exited), when the server sends something that is
not MCP, or after a call or listing that timed out or failed in a way that leaves the server in doubt (it is
*retired*: calls already under way finish, new ones get a new connection). Every failure of a call is a
:class:`~.tools.ToolError` whose message says what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import SessionMessage
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from .. import __version__
from ._mcp_io import StderrTail, describe, first_error, tool_output
from .mcp_client import McpServerError
from .tools import ToolError, ToolOutput, ToolSpec, function_name

if TYPE_CHECKING:
    from anyio.abc import ObjectSendStream, TaskStatus
    from mcp.client._transport import ReadStream, TransportStreams

    from ..clock import Clock
    from .config import McpServerConfig

__all__ = ["Connection"]

log = logging.getLogger("thinktank.agents.mcp")

CLOSE_GRACE = 10.0
"""Seconds a connection may take to shut down before it is cut (a stdio server's shutdown is bounded by the
SDK: stdin closed, then SIGTERM, then SIGKILL to its process group)."""
SSE_READ_TIMEOUT = 300.0
"""Seconds an HTTP event stream may stay silent (the SDK's default)."""
MAX_PAGES = 100
"""Pages of ``tools/list`` read at most (a server whose cursor never ends cannot hang a listing)."""
SETTLE_WAIT = 1.0
"""Seconds a call whose connection closed waits for the reason (the connection's task records it)."""
LISTEN_ATTEMPTS = 3
"""Times in a row a ``subscriptions/listen`` stream is opened again after it failed, before giving up."""


class Connection:
    """A session with one MCP server, held by its own task, with the server's tools as last listed."""

    def __init__(self, config: McpServerConfig, *, clock: Clock) -> None:
        self.config = config
        self.name = config.name
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._scope: anyio.CancelScope | None = None
        self._client: Client | None = None
        self._ready = asyncio.Event()
        self._ended = asyncio.Event()
        self._finished = asyncio.Event()
        self._reason: str | None = None
        """Why the connection ended or could not be made (a sentence about the server)."""
        self._retired = False
        self._retired_because = ""
        self._inflight = 0
        self._stderr: StderrTail | None = None
        self._said: str | None = None
        """The end of what a stdio server wrote to stderr, once it is gone."""
        self._tools: list[tuple[str, ToolSpec]] | None = None
        self._tools_seen = -1
        """The value of ``_changes`` when ``_tools`` was listed."""
        self._changes = 0
        """Counts the server's ``tools/list_changed`` notifications (and other reasons to list again)."""
        self._list_lock = asyncio.Lock()

    @property
    def usable(self) -> bool:
        """Connected, not ended, and not retired: new calls may use it."""
        return self._ready.is_set() and self._client is not None and not self._ended.is_set() and not self._retired

    @property
    def closed(self) -> bool:
        """The connection's task has finished (the transport is closed, a stdio server's process is gone)."""
        return self._finished.is_set()

    async def start(self) -> None:
        """Connect (within the server's timeout); :class:`McpServerError` says why it could not."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"mcp-server-{self.name}")
        try:
            await self._ready.wait()
        except asyncio.CancelledError:
            self.stop()
            raise
        if self._client is None or self._ended.is_set():
            raise McpServerError(f"MCP server '{self.name}' is unavailable: {self._why()}", server=self.name)

    def stop(self) -> None:
        """End the connection now (calls under way fail); :meth:`wait_closed` waits until it is closed."""
        self._end("the connection was closed")

    async def wait_closed(self) -> None:
        if self._task is not None:
            await asyncio.wait({self._task})

    def retire(self, reason: str) -> None:
        """Take no new calls; end once the calls under way are done."""
        if not self._retired:
            log.info("MCP server %s: connection retired (%s)", self.name, reason)
            self._retired = True
            self._retired_because = reason
        if self._inflight == 0:
            self._end(self._retired_because)

    async def tools(self) -> list[tuple[str, ToolSpec]]:
        """The server's tools (name on the server, spec), listed once and again after a change."""
        for _ in range(3):
            if self._tools is not None and self._tools_seen == self._changes:
                return self._tools
            async with self._list_lock:
                if self._tools is not None and self._tools_seen == self._changes:
                    return self._tools
                seen = self._changes
                tools = await self._list()
                self._tools, self._tools_seen = tools, seen
        assert self._tools is not None
        return self._tools  # changed during every listing: what it listed last

    async def call(self, tool: str, arguments: dict[str, Any], *, time_limit: float | None = None) -> ToolOutput:
        """Call ``tool`` within the server's timeout (or ``time_limit`` seconds if shorter); any failure (the
        call's, the server's, the connection's) is a :class:`ToolError`."""
        qualified = f"{self.name}.{tool}"
        timeout = self.config.timeout if time_limit is None else min(time_limit, self.config.timeout)
        client = self._acquire()
        if client is None:
            raise ToolError(f"MCP server '{self.name}' is unavailable: {self._why()}")
        try:
            with anyio.fail_after(timeout):
                result = await client.call_tool(tool, arguments, read_timeout_seconds=timeout)
        except TimeoutError:
            self.retire(f"a call to {tool} timed out")
            raise ToolError(f"MCP tool '{qualified}' did not answer within {timeout:g} s") from None
        except MCPError as exc:
            if exc.code == mcp_types.REQUEST_TIMEOUT:
                self.retire(f"a call to {tool} timed out")
                raise ToolError(f"MCP tool '{qualified}' did not answer within {timeout:g} s") from None
            if exc.code == mcp_types.CONNECTION_CLOSED:
                self.retire("the connection closed")
                await self._settled()
                raise ToolError(f"MCP tool '{qualified}' failed: {self._why()}") from None
            raise ToolError(f"MCP server '{self.name}' refused the call to '{tool}': {exc.error.message}") from None
        except ValidationError as exc:
            self.retire("it answered something that is not MCP")
            raise ToolError(f"MCP tool '{qualified}' answered something that is not a tool result: "
                            f"{first_error(exc)}") from None
        except Exception as exc:
            self.retire(f"a call to {tool} failed")
            raise ToolError(f"MCP tool '{qualified}' failed: {describe(exc)}") from None
        finally:
            self._release()
        return tool_output(result)

    # -- the connection's task ------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            with anyio.CancelScope(deadline=anyio.current_time() + self.config.timeout) as scope:
                self._scope = scope
                if self._ended.is_set():
                    scope.cancel()
                async with contextlib.AsyncExitStack() as stack:
                    client = await self._open(stack)
                    scope.deadline = math.inf
                    async with anyio.create_task_group() as tg:
                        if self._listens(client):
                            await tg.start(self._listen, client)
                        self._client = client
                        self._ready.set()
                        await self._ended.wait()
                        tg.cancel_scope.cancel()
            if scope.cancelled_caught and not self._ready.is_set() and self._reason is None:
                self._reason = f"it did not connect within {self.config.timeout:g} s"
        except Exception as exc:
            if self._reason is None:
                what = "the connection failed" if self._ready.is_set() else "it could not be connected"
                self._reason = f"{what}: {describe(exc)}"
            log.debug("MCP server %s: connection task ended", self.name, exc_info=True)
        finally:
            self._ended.set()
            self._client = None
            if self._stderr is not None:
                with anyio.CancelScope(shield=True):
                    await self._stderr.drained(SETTLE_WAIT)  # the process is gone: read what it said last
                self._said = self._stderr.text()
                self._stderr.close()
            self._ready.set()
            self._finished.set()
            log.info("MCP server %s: disconnected (%s)", self.name, self._why())

    async def _open(self, stack: contextlib.AsyncExitStack) -> Client:
        config = self.config
        headers = {key: value.get_secret_value() for key, value in config.headers.items()}
        transport: contextlib.AbstractAsyncContextManager[TransportStreams]
        if config.transport == "stdio":
            assert config.command is not None
            self._stderr = StderrTail(self.name)
            await self._stderr.start()
            params = StdioServerParameters(command=config.command[0], args=config.command[1:], env=dict(config.env),
                                           cwd=config.cwd)
            transport = stdio_client(params, errlog=self._stderr.writer)
        elif config.transport == "sse":
            assert config.url is not None
            transport = sse_client(config.url, headers=headers, timeout=config.timeout,
                                   sse_read_timeout=SSE_READ_TIMEOUT)
        else:
            import httpx2

            assert config.url is not None
            http = await stack.enter_async_context(
                httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(config.timeout, read=SSE_READ_TIMEOUT)))
            transport = streamable_http_client(config.url, http_client=http)
        client = Client(self._watched(transport), mode="auto", cache=None, read_timeout_seconds=config.timeout,
                        message_handler=self._on_message,
                        client_info=mcp_types.Implementation(name="thinktank", version=__version__))
        return await stack.enter_async_context(client)

    @contextlib.asynccontextmanager
    async def _watched(self, transport: contextlib.AbstractAsyncContextManager[TransportStreams],
                       ) -> AsyncIterator[TransportStreams]:
        """The transport, with what the server sends read through :meth:`_pump` (which sees it end)."""
        async with transport as (read, write):
            if self._stderr is not None:
                self._stderr.spawned()
            send, receive = anyio.create_memory_object_stream[SessionMessage | Exception](0)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pump, read, send)
                try:
                    yield receive, write
                finally:
                    tg.cancel_scope.cancel()
                    receive.close()

    async def _pump(self, read: ReadStream[SessionMessage | Exception],
                    send: ObjectSendStream[SessionMessage | Exception]) -> None:
        try:
            async with send:
                async for item in read:
                    if isinstance(item, Exception):
                        # a line or event that is not JSON-RPC (ValueError), or the transport failing
                        what = ("the server sent something that is not MCP" if isinstance(item, ValueError)
                                else "the connection failed")
                        if self._ready.is_set():
                            self._end(f"{what} ({describe(item)})")
                            return
                        log.warning("MCP server %s: %s while connecting: %s", self.name, what, describe(item))
                    await send.send(item)
                self._end("the server closed the connection")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, mcp_types.ToolListChangedNotification):
            self._changes += 1
            log.debug("MCP server %s: its tools changed", self.name)

    def _listens(self, client: Client) -> bool:
        """A 2026-07-28 server sends list changes only on a ``subscriptions/listen`` stream (the earlier
        protocol sends them on the session)."""
        tools = client.server_capabilities.tools
        return client.protocol_version in MODERN_PROTOCOL_VERSIONS and tools is not None and bool(tools.list_changed)

    async def _listen(self, client: Client, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Hold a ``subscriptions/listen`` stream for tool changes; started once it is open (or could not be)."""
        started = False
        failures = 0
        while failures < LISTEN_ATTEMPTS:
            try:
                async with client.listen(tools_list_changed=True) as subscription:
                    failures = 0
                    if started:
                        self._changes += 1  # listening again: changes may have been missed meanwhile
                    else:
                        started = True
                        task_status.started()
                    async for _ in subscription:
                        pass  # each event also reaches _on_message
                break  # the server ended the stream on purpose
            except Exception as exc:
                failures += 1
                self._changes += 1
                log.debug("MCP server %s: listening for tool changes failed: %s", self.name, describe(exc))
                if not started:
                    started = True
                    task_status.started()  # the connection works without it
                await self._clock.sleep(1.0)
        else:
            log.warning("MCP server %s: gave up listening for tool changes", self.name)
        if not started:
            task_status.started()

    # -- helpers --------------------------------------------------------------------------------------------

    def _end(self, reason: str) -> None:
        if self._ended.is_set():
            return
        self._reason = self._reason or reason
        self._ended.set()
        scope = self._scope
        if scope is not None:
            if self._ready.is_set():
                scope.deadline = min(scope.deadline, anyio.current_time() + CLOSE_GRACE)
            else:
                scope.cancel()

    def _acquire(self) -> Client | None:
        client = self._client
        if client is None or self._ended.is_set():
            return None
        self._inflight += 1
        return client

    def _release(self) -> None:
        self._inflight -= 1
        if self._retired and self._inflight == 0:
            self._end(self._retired_because)

    async def _settled(self) -> None:
        """Wait a moment for the connection's task to finish and say why the connection closed under a call."""
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=2 * SETTLE_WAIT)

    def _why(self) -> str:
        """Why the connection ended, with the end of what a stdio server wrote to stderr."""
        said = self._said if self._said is not None else self._stderr.text() if self._stderr is not None else ""
        return (self._reason or "the connection ended") + (f" (it said: {said})" if said else "")

    async def _list(self) -> list[tuple[str, ToolSpec]]:
        client = self._acquire()
        if client is None:
            raise McpServerError(f"MCP server '{self.name}' is unavailable: {self._why()}", server=self.name)
        timeout = self.config.timeout
        listed: list[mcp_types.Tool] = []
        try:
            with anyio.fail_after(timeout):
                cursor: str | None = None
                for _ in range(MAX_PAGES):
                    page = await client.list_tools(cursor=cursor)
                    listed.extend(page.tools)
                    cursor = page.next_cursor
                    if cursor is None:
                        break
        except TimeoutError:
            self.retire("listing its tools timed out")
            raise McpServerError(f"MCP server '{self.name}' did not list its tools within {timeout:g} s",
                                 server=self.name) from None
        except MCPError as exc:
            if exc.code == mcp_types.CONNECTION_CLOSED:
                self.retire("the connection closed")
                await self._settled()
                reason = self._why()
            else:
                reason = f"it refused to list its tools: {exc.error.message}"
            raise McpServerError(f"MCP server '{self.name}' is unavailable: {reason}", server=self.name) from None
        except Exception as exc:
            self.retire("listing its tools failed")
            raise McpServerError(f"MCP server '{self.name}' did not list its tools: {describe(exc)}",
                                 server=self.name) from None
        finally:
            self._release()
        return self._specs(listed)

    def _specs(self, listed: list[mcp_types.Tool]) -> list[tuple[str, ToolSpec]]:
        allowed = self.config.tools
        specs: dict[str, tuple[str, ToolSpec]] = {}
        for tool in listed:
            if allowed is not None and tool.name not in allowed:
                continue
            if tool.execution is not None and tool.execution.task_support == "required":
                continue  # callable only as a task, which thinktank does not run
            name = function_name(self.name, tool.name)
            if name in specs:
                log.warning("MCP server %s: tools '%s' and '%s' have the same function name %s; only the first is used",
                            self.name, specs[name][0], tool.name, name)
                continue
            schema = dict(tool.input_schema) if isinstance(tool.input_schema, dict) else {}
            schema.setdefault("type", "object")
            specs[name] = (tool.name, ToolSpec(name=name, qualified=f"{self.name}.{tool.name}",
                                               description=tool.description or tool.title or "",
                                               parameters=schema, server=self.name))
        return list(specs.values())

