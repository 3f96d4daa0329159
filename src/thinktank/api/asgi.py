"""Small raw-ASGI helpers for the hot OpenAI endpoints.

The OpenAI endpoints are served by plain ASGI handlers rather than FastAPI routes: the routing,
middleware and dependency machinery measured at roughly half the throughput of a raw handler
(docs/benchmarks.md). Everything else is FastAPI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from ..errors import PayloadTooLargeError, ThinktankError

__all__ = [
    "ASGIApp",
    "Receive",
    "Scope",
    "Send",
    "header",
    "read_body",
    "send_bytes",
    "send_error",
    "send_json",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_JSON = (b"content-type", b"application/json")


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header (``name`` in lower case)."""
    for k, v in scope["headers"]:
        if k == name:
            return bytes(v)
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes (413) without reading it all."""
    length = header(scope, b"content-length")
    if length is not None:
        try:
            if int(length) > limit:
                raise PayloadTooLargeError(f"The request body is larger than the {limit} byte limit.")
        except ValueError:
            pass
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"The request body is larger than the {limit} byte limit.")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_bytes(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    hdrs = [_JSON, (b"content-length", str(len(body)).encode())]
    if headers:
        hdrs.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, data: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send_bytes(send, status, orjson.dumps(data), headers)


async def send_error(send: Send, error: ThinktankError, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    status = error.status if error.status >= 400 else 500
    headers = [(k.lower().encode(), v.encode()) for k, v in error.headers().items()] + (extra or [])
    await send_json(send, status, error.to_body(), headers)
