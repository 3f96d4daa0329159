"""Agent runs in the database: their checkpoints, and the conditional updates that let exactly one process
take a paused or interrupted run up again (several workers may try at once). Interrupted runs are found and
claimed by :mod:`thinktank.deliberation.resume`, for runs of every kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, and_, select, update

from ..deliberation.run_store import RunStore
from ..deliberation.runs import PAUSED, CallRecord, Event
from ..store.db import Database
from ..store.tables import AgentState as AgentStateRow
from ..store.tables import Run
from .state import AgentState

__all__ = ["AgentStore", "Stored"]

_RUN: Table = Run.__table__  # type: ignore[assignment]
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
        self._runs = RunStore(db)

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
        stored = await self._runs.load(run_id)
        if stored is None or stored.state is None:
            return None
        return Stored(stored.row, AgentState.loads(stored.state), stored.events, stored.calls)

    # -- taking a run up (exactly one process wins) -------------------------------------------------
    async def claim_paused(self, run_id: str, now: float) -> bool:
        """A paused run becomes running here (False: it is not paused any more: decided, cancelled)."""
        return await self._claim(and_(_RUN.c.id == run_id, _RUN.c.status == PAUSED), now)

    async def claim_stale(self, run_id: str, now: float, silence: float) -> bool:
        """A running run whose process stopped saving it becomes this process's."""
        return await self._runs.claim_stale(run_id, now, silence)

    async def _claim(self, where: Any, now: float) -> bool:
        return await self._runs.claim(where, now)

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
