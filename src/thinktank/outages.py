"""A shared dependency that is down (the database, Redis) is the server's temporary state, not a bug: the client
gets ``503 service_unavailable`` with ``Retry-After`` and a body naming what is unavailable, never a 500.

:func:`unavailable` recognises such a failure wherever it surfaced, whatever wrapped it:

- **the database**: SQLAlchemy's ``DBAPIError`` for a connection it invalidated and its pool's timeout; asyncpg's
  connection errors (``ConnectionDoesNotExistError`` and the rest of SQLSTATE class 08), a server shutting down,
  starting up or refusing more clients (``AdminShutdownError``, ``CrashShutdownError``, ``CannotConnectNowError``,
  ``TooManyConnectionsError``), raised through SQLAlchemy or by the driver itself (the raw writes of
  ``store/raw.py``); and an ``OSError`` (refused, reset, no socket, a connect timeout) raised in the driver or in
  SQLAlchemy, which neither wraps when a new connection cannot be made;
- **Redis**: redis-py's ``ConnectionError`` (``BusyLoadingError`` too) and ``TimeoutError``, and an ``OSError``
  raised in redis-py or in the ``limits`` library.

Recovery needs nothing of the caller: the PostgreSQL pool pings a connection before handing it out
(``pool_pre_ping``) and replaces a dead one, and redis-py opens a new connection for the next command.

Classes are recognised by their module and name, so nothing here imports asyncpg or redis-py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import TracebackType
from typing import Literal

from .clock import Clock
from .errors import ServiceUnavailableError
from .gateway.health import scrub_message

__all__ = ["Dependency", "OutageLog", "outage_exception_types", "unavailable"]

log = logging.getLogger("thinktank.outage")

Dependency = Literal["database", "redis"]

_ASYNCPG_DOWN = frozenset({
    "PostgresConnectionError",  # SQLSTATE class 08, ConnectionDoesNotExistError among them
    "AdminShutdownError", "CrashShutdownError", "CannotConnectNowError",  # 57P01, 57P02, 57P03
    "TooManyConnectionsError",  # 53300
})
_REDIS_DOWN = frozenset({"ConnectionError", "TimeoutError"})
_DATABASE_MODULES = ("asyncpg", "sqlalchemy")
_REDIS_MODULES = ("redis", "limits")

_MESSAGES: dict[Dependency, tuple[str, str]] = {
    "database": ("database_unavailable", "The database is unavailable (its connection failed); nothing was "
                 "written. Try again in a few seconds."),
    "redis": ("redis_unavailable", "Redis (rate limits and budgets) is unavailable; the request was not admitted. "
              "Try again in a few seconds."),
}

#: Seconds a client is told to wait (``Retry-After``): a restart or failover of either takes a few.
RETRY_AFTER = 5.0


def _mro(exc: BaseException, package: str) -> set[str]:
    return {c.__name__ for c in type(exc).__mro__ if c.__module__.split(".", 1)[0] == package}


def _raised_in(tb: TracebackType | None) -> str | None:
    """The top-level package of the innermost frame that belongs to a database or Redis client, if any."""
    found = None
    while tb is not None:
        package = str(tb.tb_frame.f_globals.get("__name__", "")).split(".", 1)[0]
        if package in _DATABASE_MODULES or package in _REDIS_MODULES:
            found = package
        tb = tb.tb_next
    return found


def _which(exc: BaseException) -> Dependency | None:
    """What ``exc`` itself (not its causes) says is down."""
    module = type(exc).__module__.split(".", 1)[0]
    if module == "sqlalchemy":
        names = _mro(exc, "sqlalchemy")
        if "TimeoutError" in names:  # no pooled connection came free in time
            return "database"
        if "DBAPIError" in names and getattr(exc, "connection_invalidated", False):
            return "database"
        return None
    if module == "asyncpg":
        return "database" if _mro(exc, "asyncpg") & _ASYNCPG_DOWN else None
    if module == "redis":
        return "redis" if _mro(exc, "redis") & _REDIS_DOWN else None
    if isinstance(exc, OSError):
        package = _raised_in(exc.__traceback__)
        if package in _DATABASE_MODULES:
            return "database"
        if package in _REDIS_MODULES:
            return "redis"
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its causes and contexts, a DBAPIError's driver error and an exception group's members."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        orig = getattr(e, "orig", None)
        todo += [e.__cause__, e.__context__, orig if isinstance(orig, BaseException) else None]
        if isinstance(e, BaseExceptionGroup):
            todo += list(e.exceptions)


def unavailable(exc: BaseException) -> ServiceUnavailableError | None:
    """The 503 to answer when ``exc`` comes of the database or Redis being unreachable; else None."""
    for e in _chain(exc):
        which = _which(e)
        if which is not None:
            code, message = _MESSAGES[which]
            error = ServiceUnavailableError(message, code=code, retry_after=RETRY_AFTER, dependency=which)
            error.__cause__ = e  # what failed, for the log (never the client: it may name a host)
            return error
    return None


def outage_exception_types(postgres: bool, redis: bool) -> tuple[type[Exception], ...]:
    """The classes an outage surfaces as at the top of a request, for exception handlers (which are looked up by
    class): only the clients in use are imported."""
    from sqlalchemy.exc import SQLAlchemyError

    types: list[type[Exception]] = [OSError, SQLAlchemyError]
    if postgres:
        import asyncpg

        types += [asyncpg.PostgresError, asyncpg.InterfaceError]
    if redis:
        from redis.exceptions import RedisError

        types.append(RedisError)
    return tuple(types)


class OutageLog:
    """Logs an outage's failures without flooding the log: the first of each dependency at once, then one line
    every ``every`` seconds with the number met meanwhile. The messages are scrubbed (a URL may hold a password)."""

    def __init__(self, clock: Clock, every: float = 10.0) -> None:
        self._clock = clock
        self._every = every
        self._last: dict[str, float] = {}
        self._since: dict[str, int] = {}

    def failed(self, error: ServiceUnavailableError, where: str) -> None:
        which = error.dependency or "dependency"
        now = self._clock.monotonic()
        last = self._last.get(which)
        if last is not None and now - last < self._every:
            self._since[which] = self._since.get(which, 0) + 1
            return
        more = self._since.pop(which, 0)
        self._last[which] = now
        cause = error.__cause__
        what = scrub_message(f"{type(cause).__name__}: {cause}") if cause is not None else "?"
        log.warning("%s: %s is unavailable (%s)%s", where, "Redis" if which == "redis" else f"the {which}", what,
                    f"; {more} more requests failed so since the last report" if more else "")
