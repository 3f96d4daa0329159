"""Agent runs in the database: their checkpoints, and the conditional updates that let exactly one process
take a paused or interrupted run up again (several workers may try at once)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, and_, select, update

from ..deliberation.runs import PAUSED, CallRecord, Event
from ..store.db import Database
from ..store.tables import AgentState as AgentStateRow
from ..store.tables import Run, RunCall, RunEvent
from .state import AgentState

__all__ = ["AgentStore", "Stored"]

_RUN: Table = Run.__table__  # type: ignore[assignment]
_CALLS: Table = RunCall.__table__  # type: ignore[assignment]
_EVENTS: Table = RunEvent.__table__  # type: ignore[assignment]
_STATES: Table = AgentStateRow.__table__  # type: ignore[assignment]


@dataclass
class Stored:
    """An agent run as saved: enough to rebuild it and go on."""

    row: dict[str, Any]
    state: AgentState
    events: list[Event]
    calls: list[CallRecord]


class AgentStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def owner(self, run_id: str) -> tuple[str, str, str] | None:
        """(user id, kind, status) of a run, or None."""
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(select(_RUN.c.user_id, _RUN.c.kind, _RUN.c.status)
                                      .where(_RUN.c.id == run_id))).first()
        return (row[0], row[1], row[2]) if row else None

    async def state(self, run_id: str) -> AgentState | None:
        async with self._db.engine.connect() as conn:
            raw = (await conn.execute(select(_STATES.c.state).where(_STATES.c.run_id == run_id))).scalar()
        return AgentState.loads(raw) if raw is not None else None

    async def load(self, run_id: str) -> Stored | None:
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(select(_RUN).where(_RUN.c.id == run_id))).mappings().first()
            raw = (await conn.execute(select(_STATES.c.state).where(_STATES.c.run_id == run_id))).scalar()
            if row is None or raw is None:
                return None
            events = [Event(r[0], r[1], r[2], r[3]) for r in (await conn.execute(
                select(_EVENTS.c.seq, _EVENTS.c.ts, _EVENTS.c.type, _EVENTS.c.data)
                .where(_EVENTS.c.run_id == run_id).order_by(_EVENTS.c.seq))).all()]
            calls = [CallRecord(
                seq=c["seq"], stage=c["stage"], role=c["role"], model=c["model"], prompt=c["prompt"] or [], ts=c["ts"],
                deployment=c["deployment"], answer=c["answer"], prompt_tokens=c["prompt_tokens"],
                completion_tokens=c["completion_tokens"], cost_usd=c["cost_usd"], latency_ms=c["latency_ms"],
                error=c["error"],
            ) for c in (await conn.execute(select(_CALLS).where(_CALLS.c.run_id == run_id)
                                           .order_by(_CALLS.c.seq))).mappings().all()]
        return Stored(dict(row), AgentState.loads(raw), events, calls)

    # -- taking a run up (exactly one process wins) -------------------------------------------------
    async def claim_paused(self, run_id: str, now: float) -> bool:
        """A paused run becomes running here (False: it is not paused any more: decided, cancelled)."""
        return await self._claim(and_(_RUN.c.id == run_id, _RUN.c.status == PAUSED), now)

    async def claim_stale(self, run_id: str, now: float, silence: float) -> bool:
        """A running agent run whose process stopped saving it becomes this process's."""
        return await self._claim(and_(_RUN.c.id == run_id, _RUN.c.status == "running",
                                      _RUN.c.heartbeat_at < now - silence), now)

    async def _claim(self, where: Any, now: float) -> bool:
        async with self._db.engine.begin() as conn:
            result = await conn.execute(update(_RUN).where(where).values(status="running", heartbeat_at=now))
        return bool(result.rowcount)

    async def pause_again(self, run_id: str) -> None:
        """Undo a claim that found nothing to decide (another decision came first)."""
        async with self._db.engine.begin() as conn:
            await conn.execute(update(_RUN).where(and_(_RUN.c.id == run_id, _RUN.c.status == "running"))
                               .values(status=PAUSED))

    # -- what the sweeper looks for ----------------------------------------------------------------
    async def overdue(self, now: float, limit: int = 50) -> list[str]:
        """Paused runs whose approval deadline has passed."""
        q = (select(_STATES.c.run_id).join(_RUN, _RUN.c.id == _STATES.c.run_id)
             .where(and_(_RUN.c.status == PAUSED, _STATES.c.deadline.is_not(None), _STATES.c.deadline < now))
             .limit(limit))
        async with self._db.engine.connect() as conn:
            return [r[0] for r in (await conn.execute(q)).all()]

    async def stale(self, now: float, silence: float, limit: int = 50) -> list[str]:
        """Running agent runs nobody has saved for ``silence`` seconds (their process stopped)."""
        q = (select(_RUN.c.id).where(and_(_RUN.c.kind == "agent", _RUN.c.status == "running",
                                           _RUN.c.heartbeat_at < now - silence)).limit(limit))
        async with self._db.engine.connect() as conn:
            return [r[0] for r in (await conn.execute(q)).all()]
