"""What MCP connections read: a tool result as a :class:`~.tools.ToolOutput`, a stdio server's stderr, and an
exception as a short sentence (imported with :mod:`.mcp_connection`, only once a connection is made)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from typing import TextIO

import mcp_types
from mcp import MCPError
from pydantic import ValidationError

from .tools import ToolOutput

__all__ = ["StderrTail", "describe", "first_error", "tool_output"]

log = logging.getLogger("thinktank.agents.mcp")


def tool_output(result: mcp_types.CallToolResult) -> ToolOutput:
    """A tool's result for the model: its text parts joined, other parts described in a line of their own
    (``[image: image/png]``), an embedded text resource's text included; ``structuredContent`` kept in
    ``data`` (and shown as JSON when there is nothing else)."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_types.ImageContent):
            parts.append(f"[image: {block.mime_type}]")
        elif isinstance(block, mcp_types.AudioContent):
            parts.append(f"[audio: {block.mime_type}]")
        elif isinstance(block, mcp_types.EmbeddedResource):
            resource = block.resource
            if isinstance(resource, mcp_types.TextResourceContents):
                parts.append(f"[resource: {resource.uri}]\n{resource.text}")
            else:
                parts.append(f"[resource: {resource.uri} ({resource.mime_type or 'binary'})]")
        elif isinstance(block, mcp_types.ResourceLink):
            about = f": {block.description}" if block.description else ""
            parts.append(f"[resource link: {block.name} <{block.uri}>{about}]")
        else:
            parts.append(f"[{getattr(block, 'type', 'content')}]")
    data = result.structured_content
    if parts:
        text = "\n".join(parts)
    elif data is not None:
        text = json.dumps(data, ensure_ascii=False, default=str)
    else:
        text = ""
    return ToolOutput(text=text, is_error=result.is_error, data=data)


def describe(exc: BaseException) -> str:
    """An exception in a few words (the first one inside an exception group)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"no such file or directory: {exc.filename}"
    if isinstance(exc, PermissionError) and exc.filename:
        return f"permission denied: {exc.filename}"
    if isinstance(exc, MCPError):
        text = exc.error.message
    elif isinstance(exc, ValidationError):
        text = first_error(exc)
    else:
        text = str(exc).strip()
    text = " ".join(text.split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def first_error(exc: ValidationError) -> str:
    """The first problem pydantic found, on one line (``content: Input should be a valid list``)."""
    errors = exc.errors()
    if not errors:
        return " ".join(str(exc).split())
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    what = " ".join(str(first.get("msg", "")).split())
    return f"{where}: {what}" if where else what


class StderrTail:
    """What a stdio server writes to its stderr, logged at debug level; its last lines are kept for the
    message that says why the server failed."""

    KEEP = 4096
    """Bytes kept."""
    SHOWN = 400
    """Characters of the end shown in a message."""

    def __init__(self, server: str) -> None:
        self._server = server
        read_fd, write_fd = os.pipe()
        self.writer: TextIO = os.fdopen(write_fd, "w")
        """The pipe end the server's process writes to (closed here once the process has it)."""
        self._reader = os.fdopen(read_fd, "rb", buffering=0)
        self._tail = bytearray()
        self._transport: asyncio.ReadTransport | None = None
        self._eof = asyncio.Event()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.connect_read_pipe(lambda: _TailProtocol(self), self._reader)

    def spawned(self) -> None:
        """The process has started with its own copy of the pipe: close this one (so the pipe ends with it)."""
        self.writer.close()

    def feed(self, data: bytes) -> None:
        self._tail.extend(data)
        del self._tail[:-self.KEEP]
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
                log.debug("MCP server %s: %s", self._server, line)

    def ended(self) -> None:
        self._eof.set()

    async def drained(self, seconds: float) -> None:
        """Wait (at most ``seconds``) until every writer has closed the pipe (the server's process is gone)."""
        self.writer.close()
        if self._transport is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._eof.wait(), seconds)

    def text(self) -> str:
        """The end of what the server wrote, on one line."""
        lines = [line.strip() for line in self._tail.decode("utf-8", "replace").splitlines() if line.strip()]
        said = " | ".join(lines)
        return said if len(said) <= self.SHOWN else "..." + said[-self.SHOWN:]

    def close(self) -> None:
        self.writer.close()
        if self._transport is not None:
            self._transport.close()
        else:
            self._reader.close()


class _TailProtocol(asyncio.Protocol):
    def __init__(self, tail: StderrTail) -> None:
        self._tail = tail

    def data_received(self, data: bytes) -> None:
        self._tail.feed(data)

    def eof_received(self) -> None:
        self._tail.ended()

    def connection_lost(self, exc: Exception | None) -> None:
        self._tail.ended()
