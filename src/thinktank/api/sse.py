"""Server-sent events: the one encoder and the one header set every stream of the API uses (OpenAI
chunks, run events, thread turns, upload progress)."""

from __future__ import annotations

__all__ = ["DONE", "HEADERS", "HEADERS_RAW", "comment", "event"]

HEADERS: dict[str, str] = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",  # nginx and friends: do not buffer the stream
}
"""For FastAPI's StreamingResponse."""
HEADERS_RAW: list[tuple[bytes, bytes]] = [(k.encode(), v.encode()) for k, v in HEADERS.items()]
"""For raw ASGI ``http.response.start``."""

DONE = b"data: [DONE]\n\n"
"""OpenAI's end of a chat completion stream."""


def event(data: bytes, *, id: int | None = None, name: str | None = None) -> bytes:
    """One event: ``data`` is one line of JSON; ``id`` lets a client resume after it (``Last-Event-ID``)."""
    head = b""
    if id is not None:
        head += b"id: %d\n" % id
    if name is not None:
        head += b"event: %s\n" % name.encode()
    return head + b"data: " + data + b"\n\n"


def comment(text: str) -> bytes:
    """A comment line: clients skip it; it keeps the connection alive and shows progress to a person
    watching the raw stream."""
    return b": " + text.replace("\n", " ").replace("\r", " ").encode() + b"\n\n"
