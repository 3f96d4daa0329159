"""Requests flowing through the load balancer while something breaks: every outcome recorded with the phase it
started in."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

#: Seconds a request may take before it counts as hung (the client gives up): outages must be answered sooner.
BOUND = 20.0

Request = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


@dataclass
class Outcome:
    phase: str
    kind: str
    status: int | None
    """None: no HTTP answer (see ``failure``)."""
    failure: str | None = None
    """``timeout`` (no answer within BOUND) or the transport error."""
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class Load:
    """Workers sending requests of each kind, one after another, until stopped."""

    def __init__(self, kinds: dict[str, Request], workers_per_kind: int = 2, pause: float = 0.05) -> None:
        self.kinds = kinds
        self.workers_per_kind = workers_per_kind
        self.pause = pause
        self.phase = "before"
        self.outcomes: list[Outcome] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for kind, request in self.kinds.items():
            for _ in range(self.workers_per_kind):
                self._tasks.append(asyncio.create_task(self._work(kind, request)))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _work(self, kind: str, request: Request) -> None:
        async with httpx.AsyncClient(timeout=BOUND) as client:
            while not self._stop.is_set():
                phase = self.phase
                try:
                    r = await request(client)
                except httpx.TimeoutException:
                    self.outcomes.append(Outcome(phase, kind, None, "timeout"))
                except httpx.TransportError as exc:
                    self.outcomes.append(Outcome(phase, kind, None, repr(exc)))
                else:
                    try:
                        body = r.json()
                    except ValueError:
                        body = r.text
                    self.outcomes.append(Outcome(phase, kind, r.status_code, None, body, dict(r.headers)))
                await asyncio.sleep(self.pause)

    def of(self, phase: str | None = None, kind: str | None = None) -> list[Outcome]:
        return [o for o in self.outcomes if (phase is None or o.phase == phase) and (kind is None or o.kind == kind)]

    async def until(self, check: Callable[[], bool], what: str, timeout: float = 30) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not check():
            assert loop.time() < deadline, f"{what}: not within {timeout:g} s; outcomes: {self.summary()}"
            await asyncio.sleep(0.1)

    def summary(self) -> dict[tuple[str, str, str], int]:
        counts: dict[tuple[str, str, str], int] = {}
        for o in self.outcomes:
            code = o.body["error"].get("code") if isinstance(o.body, dict) and "error" in o.body else None
            label = str(o.status) + (f" {code}" if code else "") if o.status is not None else str(o.failure)
            counts[(o.phase, o.kind, label)] = counts.get((o.phase, o.kind, label), 0) + 1
        return counts
