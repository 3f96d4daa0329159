"""The route class of every ``/api`` router: JSON bodies are parsed strictly, as the OpenAI endpoints parse
theirs (orjson), not with the standard library's ``json``, which lets through what no database or
response can hold:

- a lone surrogate, as an escape (``"\\ud800"``) or as the bytes of one (``ED A0 80``): a ``str`` that
  cannot be encoded, so the first write of it failed (a 500);
- ``NaN``, ``Infinity`` and numbers too large for a double (``1e400``): floats no JSON answer can carry;
- bytes that are not UTF-8;
- a NUL character (``"\u0000"``), which PostgreSQL cannot store in text: a 400 naming it.

Each is refused as the body is parsed: a 422 saying where the body is not valid JSON, before any
route code runs. A ``UnicodeEncodeError`` that escapes a route all the same is answered by
:func:`unencodable_text`'s 400 (see ``api.app``).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

from ..errors import InvalidRequestError

__all__ = ["StrictJSONRequest", "StrictJSONRoute", "unencodable_text"]


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            # orjson.JSONDecodeError is a json.JSONDecodeError: FastAPI answers it as invalid JSON.
            body = await self.body()
            parsed = orjson.loads(body)
            if b"u0000" in body and _holds_nul(parsed):
                # (An HTTPException: FastAPI passes it on as it is while it reads the body.)
                raise HTTPException(400, "The request holds a NUL character (\\u0000), which cannot be stored; "
                                         "remove it.")
            self._json = parsed
        return self._json


def _holds_nul(value: Any) -> bool:
    """Whether a NUL character is in any string (or key) of parsed JSON."""
    todo = [value]
    while todo:
        v = todo.pop()
        if isinstance(v, str):
            if "\x00" in v:
                return True
        elif isinstance(v, dict):
            todo.extend(v.keys())
            todo.extend(v.values())
        elif isinstance(v, list):
            todo.extend(v)
    return False


class StrictJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict


#: PostgreSQL's errors for text it cannot hold: 22021 (a NUL byte in text), 22P05 (``\u0000`` in JSONB).
_UNSTORABLE = frozenset({"22021", "22P05"})


def unencodable_text(exc: BaseException) -> InvalidRequestError | None:
    """The client's error when ``exc`` comes of text that cannot be encoded as UTF-8 (a lone surrogate),
    directly (SQLite, password hashing) or as the cause of a driver's error (asyncpg), or that PostgreSQL cannot
    store (a NUL character); else None."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, UnicodeEncodeError):
            return InvalidRequestError(
                "The request holds text that is not valid Unicode (a lone surrogate such as \\ud800); "
                "send UTF-8 text.", code="invalid_unicode")
        if getattr(e, "sqlstate", None) in _UNSTORABLE:  # PostgreSQL: a NUL character in text or JSON
            return InvalidRequestError("The request holds a character the database cannot store (a NUL, \\u0000); "
                                       "remove it.", code="invalid_text")
        orig = getattr(e, "orig", None)
        todo += [e.__cause__, e.__context__, orig if isinstance(orig, BaseException) else None]
    return None
