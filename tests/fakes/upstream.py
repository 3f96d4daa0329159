"""A scriptable fake upstream on loopback: a real aiohttp server that answers with whatever the
test queues (status, headers, JSON, raw garbage, SSE events with delays, a hang, a dropped
connection) and records every request it receives.

Wire-format helpers for each provider live next to it (``openai.py``, ``anthropic.py``,
``gemini.py``); they build the exact bodies those APIs send.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from .server import serve_aiohttp


@dataclass
class Reply:
    status: int = 200
    json: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    sse: list[str] | None = None
    """Raw SSE events, each already framed (``"data: {...}\\n\\n"``)."""
    delay: float = 0.0
    chunk_delay: float = 0.0
    hang: bool = False
    drop: bool = False
    """Close the connection without an answer."""
    drop_after: int | None = None
    """With ``sse``: break the connection after this many events."""
    gate: asyncio.Event | None = None
    """With ``sse``: send the first event, then wait for this event before the rest."""


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any


Handler = Callable[[Recorded], Reply]


class FakeUpstream:
    """``await fake.start()`` returns the base URL ``http://127.0.0.1:PORT``."""

    def __init__(self, default: Handler | None = None) -> None:
        self.default = default
        self.script: deque[Reply] = deque()
        self.requests: list[Recorded] = []
        self.cancelled = 0
        """Requests whose client went away before the answer was complete."""
        self.cancel_event = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    def queue(self, *replies: Reply) -> None:
        self.script.extend(replies)

    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner, self.url = await serve_aiohttp(app, shutdown_timeout=0.1, handler_cancellation=True)
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw
        rec = Recorded(request.method, request.path, dict(request.query), dict(request.headers), body)
        self.requests.append(rec)
        if self.script:
            reply = self.script.popleft()
        elif self.default is not None:
            reply = self.default(rec)
        else:
            reply = Reply(status=500, json={"error": {"message": "nothing scripted"}})
        try:
            return await self._answer(request, reply)
        except asyncio.CancelledError:
            self.cancelled += 1
            self.cancel_event.set()
            raise
        except ConnectionResetError:
            self.cancelled += 1
            self.cancel_event.set()
            raise

    async def _answer(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.hang:
            await asyncio.sleep(3600)
        if reply.drop:
            transport = request.transport
            if transport is not None:
                transport.close()
            raise ConnectionResetError("dropped on purpose")
        if reply.sse is not None:
            headers = {"content-type": "text/event-stream", **reply.headers}
            resp = web.StreamResponse(status=reply.status, headers=headers)
            await resp.prepare(request)
            for i, event in enumerate(reply.sse):
                if reply.drop_after is not None and i >= reply.drop_after:
                    transport = request.transport
                    if transport is not None:
                        transport.close()
                    return resp
                if i == 1 and reply.gate is not None:
                    await reply.gate.wait()
                if i and reply.chunk_delay:
                    await asyncio.sleep(reply.chunk_delay)
                await resp.write(event.encode())
            await resp.write_eof()
            return resp
        if reply.body is not None:
            return web.Response(status=reply.status, body=reply.body, headers=reply.headers)
        return web.Response(
            status=reply.status,
            body=orjson.dumps(reply.json),
            headers={"content-type": "application/json", **reply.headers},
        )


def sse(*objects: Any, done: bool = True) -> list[str]:
    """``data: {json}`` events (OpenAI style), optionally ending with ``data: [DONE]``."""
    events = [f"data: {orjson.dumps(o).decode()}\n\n" for o in objects]
    if done:
        events.append("data: [DONE]\n\n")
    return events


def named_sse(*pairs: tuple[str, Any]) -> list[str]:
    """``event: NAME`` + ``data: {json}`` events (Anthropic style)."""
    return [f"event: {name}\ndata: {orjson.dumps(obj).decode()}\n\n" for name, obj in pairs]


@contextmanager
def served_in_thread(default: Handler | None = None) -> Iterator[FakeUpstream]:
    """A ``FakeUpstream(default)`` served from a thread and event loop of its own (its ``url`` set), for tests whose
    servers under test are other processes; stopped and closed on exit."""
    fake = FakeUpstream(default)
    started = threading.Event()
    loop = asyncio.new_event_loop()

    def serve() -> None:
        loop.run_until_complete(fake.start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(fake.close())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10), "the fake upstream did not start"
    try:
        yield fake
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
