"""Request ids: one per HTTP request, the client's own ``x-request-id`` when it is sane, else a generated one.

The id lives in a context variable for the length of the request, so every log line written while handling
it (and by the tasks it starts: a run going on after its answer) carries it. A generated id is also the
usage record's ``request_id`` (:func:`claim`): the first admission of the request takes it, any further one
(a thread turn's memory extraction) gets an id of its own, and a client's id never becomes one (it need not
be unique, and usage ids must be).
"""

from __future__ import annotations

import itertools
import re
import secrets
from contextvars import ContextVar
from typing import Final

__all__ = ["CURRENT", "HEADER", "RequestId", "RequestIds", "claim", "current_id"]

HEADER: Final = b"x-request-id"
MAX_LENGTH: Final = 128
_SANE = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")
"""What a client's id may be: no spaces, quotes or control characters (it goes into log lines as it is)."""


class RequestId:
    """The id of the request being handled; ``generated``: made here (unique), not sent by the client."""

    __slots__ = ("claimed", "generated", "value")

    def __init__(self, value: str, generated: bool) -> None:
        self.value = value
        self.generated = generated
        self.claimed = False


CURRENT: ContextVar[RequestId | None] = ContextVar("thinktank_request_id", default=None)


def current_id() -> str | None:
    """The id of the request being handled here, if any."""
    rid = CURRENT.get()
    return None if rid is None else rid.value


def claim() -> str | None:
    """The current request's generated id, once (for a usage record); None when there is none left to take."""
    rid = CURRENT.get()
    if rid is None or rid.claimed or not rid.generated:
        return None
    rid.claimed = True
    return rid.value


class RequestIds:
    """Makes request ids: a random prefix for this process and a counter (a system call per request for
    randomness measured at ~20 µs in a sandboxed kernel). Unique across processes and restarts."""

    def __init__(self) -> None:
        self._prefix = "req-" + secrets.token_hex(6) + "-"
        self._counter = itertools.count(1)

    def new(self) -> RequestId:
        return RequestId(f"{self._prefix}{next(self._counter):x}", True)

    def for_headers(self, headers: list[tuple[bytes, bytes]]) -> RequestId:
        """The client's ``x-request-id`` if it sent a sane one, else a new one."""
        for name, value in headers:
            if name == HEADER:
                if len(value) <= MAX_LENGTH and _SANE.fullmatch(value):
                    return RequestId(value.decode("ascii"), False)
                break
        return self.new()
