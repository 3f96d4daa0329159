"""``/ready``: each dependency checked on its own, in bounded time.

- the database: ``SELECT 1`` (always required);
- Redis, when the settings name a Redis server: ``PING`` (required then: rate limits and budgets live there);
- each upstream deployment: a TCP connect to its host (cached for ``probe_ttl`` seconds, so probes every
  second from a load balancer do not hammer a provider), and whether the router has it cooling down.

Upstreams are shared by every replica, so taking replicas out of a load balancer because a provider is down
helps nobody, and a gateway whose one provider is down still serves the others: by default
(``ready_upstreams: any``) upstreams fail the check only when none of them is reachable; ``all`` fails it
when any is not, ``none`` never. The report names deployments by id only: no URL, host, key or query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from ..gateway.health import scrub_message

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ..gateway.router import Router
    from ..store.db import Database

__all__ = ["Readiness"]

log = logging.getLogger("thinktank.ready")

_REDIS = {"redis": "redis", "rediss": "rediss", "unix": "unix", "redis+unix": "unix"}
"""Single-server Redis schemes this checks (and the scheme redis-py expects); others are reported unchecked."""


@dataclass(frozen=True, slots=True)
class _Probe:
    reachable: bool
    latency_ms: float | None
    error: str | None
    at: float
    """When it was probed (``time.monotonic``)."""


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


class Readiness:
    def __init__(self, db: Database, router: Router, redis_url: str | None, *, timeout: float = 2.0,
                 upstreams: Literal["any", "all", "none"] = "any", probe_ttl: float = 5.0) -> None:
        self.db = db
        self.router = router
        self.timeout = timeout
        self.upstreams = upstreams
        self.probe_ttl = probe_ttl
        self._redis_url = redis_url
        self._redis: Redis | None = None
        self._probes: dict[tuple[str, int], _Probe] = {}
        self._probing: dict[tuple[str, int], asyncio.Task[_Probe]] = {}

    async def check(self) -> tuple[bool, dict[str, Any]]:
        """(ready, the report): every check at once, each within ``timeout``."""
        checks: dict[str, Any] = {}
        jobs: dict[str, Awaitable[dict[str, Any]]] = {"database": self._bounded(self._database)}
        redis = self._redis_check()
        if redis is not None:
            jobs["redis"] = self._bounded(redis)
        names = list(jobs)
        done = await asyncio.gather(*jobs.values(), self._upstreams())
        checks.update(zip(names, done[:-1], strict=True))
        upstreams: dict[str, dict[str, Any]] = done[-1]
        checks["upstreams"] = upstreams
        ready = all(c["status"] == "ok" for c in checks.values() if c is not upstreams and c["status"] != "unchecked")
        if upstreams and self.upstreams != "none":
            up = [u["reachable"] for u in upstreams.values()]
            ready = ready and (all(up) if self.upstreams == "all" else any(up))
        return ready, checks

    async def _bounded(self, check: Callable[[], Awaitable[None]]) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                await check()
        except _Unchecked:
            return {"status": "unchecked", "reason": "only single-server Redis URLs are checked"}
        except TimeoutError:
            return {"status": "error", "error": f"no answer within {self.timeout:g} s", "latency_ms": _ms(started)}
        except Exception as exc:  # any failure of the dependency is its report, never a 500
            # /ready answers anyone: the report names the kind of failure, the log (scrubbed) the rest, which
            # may hold an internal host and port.
            log.warning("readiness: %s", scrub_message(f"{type(exc).__name__}: {exc}"))
            return {"status": "error", "error": type(exc).__name__, "latency_ms": _ms(started)}
        return {"status": "ok", "latency_ms": _ms(started)}

    async def _database(self) -> None:
        from sqlalchemy import text

        async with self.db.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    def _redis_check(self) -> Callable[[], Awaitable[None]] | None:
        url = self._redis_url
        if not url:
            return None
        scheme = url.split("://", 1)[0].lower()
        if scheme == "memory":
            return None
        if scheme not in _REDIS:
            async def unchecked() -> None:
                raise _Unchecked
            return unchecked

        async def ping() -> None:
            if self._redis is None:
                from redis.asyncio import Redis

                self._redis = Redis.from_url(_REDIS[scheme] + url[len(scheme):], socket_timeout=self.timeout,
                                             socket_connect_timeout=self.timeout, single_connection_client=False)
            await self._redis.ping()
        return ping

    async def _upstreams(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        probes: dict[str, asyncio.Future[_Probe]] = {}
        for dep in self.router.deployments:
            target = _target(getattr(dep.model, "base_url", None))
            if target is not None:
                probes[dep.id] = asyncio.ensure_future(self._probe(target))
        results = dict(zip(probes, await asyncio.gather(*probes.values()), strict=True))
        cooldowns = self.router.cooldowns
        for dep in self.router.deployments:
            remaining = cooldowns.remaining(dep.id)
            probe = results.get(dep.id)
            entry: dict[str, Any]
            if probe is None:  # an in-process model (mock): nothing to reach
                entry = {"status": "ok", "reachable": True, "probe": "none"}
            else:
                entry = {"status": "ok" if probe.reachable else "unreachable", "reachable": probe.reachable,
                         "latency_ms": probe.latency_ms}
                if probe.error is not None:
                    entry["error"] = probe.error
            if remaining > 0:
                entry["status"] = "cooling_down" if entry["reachable"] else entry["status"]
                entry["cooldown_remaining_s"] = round(remaining, 3)
            failures = cooldowns.failures(dep.id)
            if failures:
                entry["consecutive_failures"] = failures
            out[dep.id] = entry
        return out

    async def _probe(self, target: tuple[str, int]) -> _Probe:
        now = time.monotonic()
        known = self._probes.get(target)
        if known is not None and now - known.at < self.probe_ttl:
            return known
        running = self._probing.get(target)
        if running is None:  # one connect at a time per host, however many probes ask
            running = self._probing[target] = asyncio.ensure_future(self._connect(target))
            running.add_done_callback(lambda _t: self._probing.pop(target, None))
        return await asyncio.shield(running)

    async def _connect(self, target: tuple[str, int]) -> _Probe:
        started = time.perf_counter()
        error: str | None = None
        try:
            async with asyncio.timeout(self.timeout):
                _reader, writer = await asyncio.open_connection(*target)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        except TimeoutError:
            error = f"no connection within {self.timeout:g} s"
        except OSError as exc:
            error = scrub_message(exc.strerror or type(exc).__name__)
        probe = _Probe(error is None, _ms(started) if error is None else None, error, time.monotonic())
        self._probes[target] = probe
        return probe

    async def close(self) -> None:
        for task in list(self._probing.values()):
            task.cancel()
        if self._redis is not None:
            await self._redis.aclose()


class _Unchecked(Exception):
    pass


def _target(base_url: object) -> tuple[str, int] | None:
    """The host and port an upstream's base URL connects to (nothing else of the URL is kept)."""
    if not isinstance(base_url, str):
        return None
    try:
        parts = urlsplit(base_url)
        port = parts.port
    except ValueError:
        return None
    if parts.hostname is None:
        return None
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)
