"""RunStore: persistence of runs, their calls, events and documents, and of the leaderboard's comparisons.

The deliberation side of the database; the database itself (engine, tables, migrations) is :mod:`thinktank.store`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Table, and_, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..errors import ConflictError
from ..store.db import Database
from ..store.raw import Batch, GuardFailed, Insert, write
from ..store.tables import AgentState, Comparison, Run, RunCall, RunDocument, RunEvent
from .runs import PAUSED, CallRecord, Event, LiveRun

__all__ = ["RunStore", "RunTakenOver", "StoredRun"]

_RUN: Table = Run.__table__  # type: ignore[assignment]
_CALLS: Table = RunCall.__table__  # type: ignore[assignment]
_EVENTS: Table = RunEvent.__table__  # type: ignore[assignment]
_DOCS: Table = RunDocument.__table__  # type: ignore[assignment]
_CMP: Table = Comparison.__table__  # type: ignore[assignment]
_STATES: Table = AgentState.__table__  # type: ignore[assignment]


class RunTakenOver(Exception):
    """Another process has taken the run up (this one stopped saving it for too long): nothing was written."""


@dataclass
class StoredRun:
    """A run as saved: enough to rebuild it and go on."""

    row: dict[str, Any]
    events: list[Event]
    calls: list[CallRecord]
    state: Any
    """Its checkpoint (``agent_states.state``: an agent's state, an ensemble's or a debate's steps), or None."""


def _json(value: Any) -> str | None:
    """A JSON column's value as the drivers take it (text; SQL NULL for None)."""
    return None if value is None else orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _run_row(run: LiveRun) -> tuple[Any, ...]:
    return (
        run.id, run.user_id, run.key_id, run.kind, run.name, run.status, run.question, _json(run.request),
        _json(run.config), _json(run.result), run.error, _json(run.tags), round(run.cost, 10), run.prompt_tokens,
        run.completion_tokens, run.cache_key, run.cached_from, False, run.created_at, run.heartbeat,
        run.finished_at,
    )


def _call_row(run_id: str, c: CallRecord) -> tuple[Any, ...]:
    return (run_id, c.seq, c.stage, c.role, c.model, c.deployment, _json(c.prompt), c.answer, c.prompt_tokens,
            c.completion_tokens, c.cost_usd, c.latency_ms, c.error, c.ts)


_RUN_INSERT = Insert("runs", (
    "id", "user_id", "key_id", "kind", "name", "status", "question", "request", "config", "result", "error", "tags",
    "cost_usd", "prompt_tokens", "completion_tokens", "cache_key", "cached_from", "cancel_requested", "created_at",
    "heartbeat_at", "finished_at",
))
_CALL_INSERT = Insert("run_calls", (
    "run_id", "seq", "stage", "role", "model", "deployment", "prompt", "answer", "prompt_tokens",
    "completion_tokens", "cost_usd", "latency_ms", "error", "ts",
))
_EVENT_INSERT = Insert("run_events", ("run_id", "seq", "ts", "type", "data"))
_DOC_INSERT = Insert("run_documents", ("run_id", "name", "content", "created_at"))
# Only while the heartbeat is the one this process wrote last: another process that took the run up wrote its own.
_UPDATE_PROGRESS = (
    "UPDATE runs SET heartbeat_at = ?, cost_usd = ?, prompt_tokens = ?, completion_tokens = ?, status = ? "
    "WHERE id = ? AND heartbeat_at = ?"
)
_UPDATE_FINAL = (
    "UPDATE runs SET heartbeat_at = ?, cost_usd = ?, prompt_tokens = ?, completion_tokens = ?, status = ?, "
    "result = ?, error = ?, finished_at = ? WHERE id = ? AND heartbeat_at = ?"
)
_DELETE_STATE = "DELETE FROM agent_states WHERE run_id = ?"
_SELECT_CANCEL = "SELECT cancel_requested FROM runs WHERE id = ?"
_UPSERT_STATE = (
    "INSERT INTO agent_states (run_id, state, version, deadline, updated_at) VALUES (?, ?, 1, ?, ?) "
    "ON CONFLICT (run_id) DO UPDATE SET state = excluded.state, version = agent_states.version + 1, "
    "deadline = excluded.deadline, updated_at = excluded.updated_at"
)


class RunStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, run: LiveRun) -> None:
        run.heartbeat = run.clock.time()
        batch = Batch()
        batch.insert(_RUN_INSERT, [_run_row(run)])
        added = self._append(batch, run)
        checkpoint = self._checkpoint(batch, run)
        await write(self._db, batch)
        self._saved(run, added, checkpoint)

    async def save(self, run: LiveRun) -> bool:
        """Write what is new (events, finished calls, totals, the checkpoint, and at the end status, result
        and documents) in one transaction. Returns whether someone asked for the run to be cancelled; raises
        RunTakenOver, writing nothing, if another process has taken the run up meanwhile.

        Through the driver itself (:mod:`..store.raw`): a run's writes are on the path of every
        ensemble, and through SQLAlchemy Core they cost 6 to 7 ms of CPU."""
        heartbeat = run.clock.time()
        totals = (heartbeat, round(run.cost, 10), run.prompt_tokens, run.completion_tokens, run.status)
        batch = Batch()
        if run.finished:
            batch.guard(_UPDATE_FINAL, (*totals, _json(run.result), run.error, run.finished_at, run.id,
                                        run.heartbeat))
        else:
            batch.guard(_UPDATE_PROGRESS, (*totals, run.id, run.heartbeat))
        added = self._append(batch, run)
        checkpoint = self._checkpoint(batch, run)
        if run.finished:
            batch.insert(_DOC_INSERT, [(run.id, n, c, run.finished_at) for n, c in run.documents.items()])
        else:
            batch.value(_SELECT_CANCEL, (run.id,))
        try:
            values = await write(self._db, batch)
        except GuardFailed:
            raise RunTakenOver(run.id) from None
        run.heartbeat = heartbeat
        self._saved(run, added, checkpoint)
        return bool(values and values[0])

    @staticmethod
    def _append(batch: Batch, run: LiveRun) -> tuple[int, list[CallRecord]]:
        """Events and finished calls not written yet (a call still in flight is written once it ends; all of
        them once the run has ended)."""
        events = run.events[run.saved_events:]
        calls = [c for c in run.calls[run.saved_calls:]
                 if not c.saved and (c.answer is not None or c.error is not None or run.finished)]
        batch.insert(_EVENT_INSERT, [(run.id, e.seq, e.ts, e.type, _json(e.data)) for e in events])
        batch.insert(_CALL_INSERT, [_call_row(run.id, c) for c in calls])
        return len(events), calls

    @staticmethod
    def _checkpoint(batch: Batch, run: LiveRun) -> tuple[str, float | None] | None:
        """The run's state to write with the events it goes with. An ended ensemble or debate needs none: its
        result holds everything (one written before is deleted)."""
        checkpoint = run.checkpoint
        if run.finished and run.kind != "agent":
            if run.checkpoint_saved:
                batch.execute(_DELETE_STATE, (run.id,))
            run.checkpoint = None
            return None
        if checkpoint is not None:
            batch.execute(_UPSERT_STATE, (run.id, checkpoint[0], checkpoint[1], run.clock.time()))
        return checkpoint

    @staticmethod
    def _saved(run: LiveRun, added: tuple[int, list[CallRecord]],
               checkpoint: tuple[str, float | None] | None = None) -> None:
        run.saved_events += added[0]
        for call in added[1]:
            call.saved = True
        while run.saved_calls < len(run.calls) and run.calls[run.saved_calls].saved:
            run.saved_calls += 1
        if checkpoint is not None:
            run.checkpoint_saved = True
            if run.checkpoint is checkpoint:
                run.checkpoint = None  # written (a newer one, set meanwhile, waits for the next save)

    # -- reading ---------------------------------------------------------------------------------
    async def get(self, run_id: str) -> dict[str, Any] | None:
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(select(_RUN).where(_RUN.c.id == run_id))).mappings().first()
            if row is None:
                return None
            calls = (await conn.execute(
                select(_CALLS).where(_CALLS.c.run_id == run_id).order_by(_CALLS.c.seq)
            )).mappings().all()
            docs = (await conn.execute(select(_DOCS.c.name).where(_DOCS.c.run_id == run_id))).scalars().all()
            events = (await conn.execute(
                select(_EVENTS.c.seq).where(_EVENTS.c.run_id == run_id).order_by(_EVENTS.c.seq.desc()).limit(1)
            )).scalar()
        record = {k: row[k] for k in (
            "id", "user_id", "kind", "name", "status", "question", "request", "config", "tags", "result", "error",
            "cost_usd", "prompt_tokens", "completion_tokens", "created_at", "finished_at", "cached_from",
        )}
        record["cost_by_stage"] = _stage_costs(calls)
        record["documents"] = sorted(docs)
        record["calls"] = [{k: v for k, v in c.items() if k not in ("id", "run_id")} for c in calls]
        record["events"] = events or 0
        return record

    async def owner(self, run_id: str) -> tuple[str, str] | None:
        """(user id, status) of a run, or None."""
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(select(_RUN.c.user_id, _RUN.c.status).where(_RUN.c.id == run_id))).first()
        return (row[0], row[1]) if row else None

    async def runs(
        self, user_id: str | None, *, kind: str | None = None, status: str | None = None, limit: int = 50,
        before: float | None = None,
    ) -> list[dict[str, Any]]:
        cols = [_RUN.c[k] for k in ("id", "user_id", "kind", "name", "status", "question", "cost_usd", "tags",
                                    "created_at", "finished_at", "cached_from")]
        q = select(*cols).order_by(_RUN.c.created_at.desc()).limit(limit)
        if user_id is not None:
            q = q.where(_RUN.c.user_id == user_id)
        if kind is not None:
            q = q.where(_RUN.c.kind == kind)
        if status is not None:
            q = q.where(_RUN.c.status == status)
        if before is not None:
            q = q.where(_RUN.c.created_at < before)
        async with self._db.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings().all()]

    async def events(self, run_id: str, after: int = 0) -> list[Event]:
        q = (select(_EVENTS.c.seq, _EVENTS.c.ts, _EVENTS.c.type, _EVENTS.c.data)
             .where(and_(_EVENTS.c.run_id == run_id, _EVENTS.c.seq > after)).order_by(_EVENTS.c.seq))
        async with self._db.engine.connect() as conn:
            return [Event(r[0], r[1], r[2], r[3]) for r in (await conn.execute(q)).all()]

    async def document(self, run_id: str, name: str) -> str | None:
        q = select(_DOCS.c.content).where(and_(_DOCS.c.run_id == run_id, _DOCS.c.name == name))
        async with self._db.engine.connect() as conn:
            return (await conn.execute(q)).scalar()

    async def load(self, run_id: str) -> StoredRun | None:
        """A run with its events, calls and checkpoint, to take it up again."""
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(select(_RUN).where(_RUN.c.id == run_id))).mappings().first()
            if row is None:
                return None
            state = (await conn.execute(select(_STATES.c.state).where(_STATES.c.run_id == run_id))).scalar()
            events = [Event(r[0], r[1], r[2], r[3]) for r in (await conn.execute(
                select(_EVENTS.c.seq, _EVENTS.c.ts, _EVENTS.c.type, _EVENTS.c.data)
                .where(_EVENTS.c.run_id == run_id).order_by(_EVENTS.c.seq))).all()]
            calls = [CallRecord(
                seq=c["seq"], stage=c["stage"], role=c["role"], model=c["model"], prompt=c["prompt"] or [], ts=c["ts"],
                deployment=c["deployment"], answer=c["answer"], prompt_tokens=c["prompt_tokens"],
                completion_tokens=c["completion_tokens"], cost_usd=c["cost_usd"], latency_ms=c["latency_ms"],
                error=c["error"], saved=True,
            ) for c in (await conn.execute(select(_CALLS).where(_CALLS.c.run_id == run_id)
                                           .order_by(_CALLS.c.seq))).mappings().all()]
        return StoredRun(dict(row), events, calls, orjson.loads(state) if isinstance(state, str | bytes) else state)

    async def stale(self, now: float, silence: float, limit: int = 50) -> list[str]:
        """Running runs nobody has saved for ``silence`` seconds (the process running them stopped), oldest
        silence first."""
        q = (select(_RUN.c.id).where(and_(_RUN.c.status == "running", _RUN.c.heartbeat_at < now - silence))
             .order_by(_RUN.c.heartbeat_at).limit(limit))
        async with self._db.engine.connect() as conn:
            return [r[0] for r in (await conn.execute(q)).all()]

    async def claim_stale(self, run_id: str, now: float, silence: float) -> bool:
        """A running run nobody has saved for ``silence`` seconds becomes this process's (its heartbeat is now
        this process's, so the one that stopped cannot write it any more): False if another process was
        first, or if it is not stale."""
        return await self.claim(and_(_RUN.c.id == run_id, _RUN.c.status == "running",
                                     _RUN.c.heartbeat_at < now - silence), now)

    async def claim_created(self, run_id: str, heartbeat: float, now: float) -> bool:
        """A new run handed over by the process that created it becomes this process's, unless another took it
        up meanwhile (its heartbeat is no longer the one written when it was created)."""
        return await self.claim(and_(_RUN.c.id == run_id, _RUN.c.status == "running",
                                     _RUN.c.heartbeat_at == heartbeat), now)

    async def claim(self, where: Any, now: float) -> bool:
        """The run ``where`` selects becomes running here, by one conditional update (exactly one process wins)."""
        async with self._db.engine.begin() as conn:
            result = await conn.execute(update(_RUN).where(where).values(status="running", heartbeat_at=now))
        return bool(result.rowcount)

    async def mark_interrupted(self, now: float, max_silence: float) -> int:
        """Runs still 'running' whose process stopped saving them (it crashed): failed, interrupted (where no
        process can take them up: a service built without the means to, in tests)."""
        # Agent runs are resumed from their checkpoint instead (thinktank.agents.service).
        stale = and_(_RUN.c.status == "running", _RUN.c.heartbeat_at < now - max_silence, _RUN.c.kind != "agent")
        async with self._db.engine.begin() as conn:
            result = await conn.execute(update(_RUN).where(stale).values(
                status="failed", finished_at=now,
                error="Interrupted: the server running it stopped before it finished.",
            ))
        return int(result.rowcount or 0)

    async def cancel_paused(self, run_id: str, now: float) -> bool:
        """Cancel a run that waits for a decision (no process executes it): False if it no longer waits."""
        async with self._db.engine.begin() as conn:
            result = await conn.execute(update(_RUN).where(and_(_RUN.c.id == run_id, _RUN.c.status == PAUSED))
                                        .values(status="cancelled", finished_at=now, error="The run was cancelled."))
            if not result.rowcount:
                return False
            last = (await conn.execute(select(func.max(_EVENTS.c.seq)).where(_EVENTS.c.run_id == run_id))).scalar()
            await conn.execute(insert(_EVENTS), [{"run_id": run_id, "seq": (last or 0) + 1, "ts": now, "type": "done",
                                                  "data": {"status": "cancelled", "cost_usd": None}}])
        return True

    async def fail(self, run_id: str, now: float, error: str) -> None:
        """A run that cannot go on (nobody executes it): failed, saying why (its followers are told)."""
        async with self._db.engine.begin() as conn:
            await conn.execute(update(_RUN).where(_RUN.c.id == run_id)
                               .values(status="failed", finished_at=now, error=error))
            last = (await conn.execute(select(func.max(_EVENTS.c.seq)).where(_EVENTS.c.run_id == run_id))).scalar()
            seq = last or 0
            await conn.execute(insert(_EVENTS), [
                {"run_id": run_id, "seq": seq + 1, "ts": now, "type": "error",
                 "data": {"message": error, "status": 502}},
                {"run_id": run_id, "seq": seq + 2, "ts": now, "type": "done",
                 "data": {"status": "failed", "cost_usd": None}},
            ])

    async def release(self, run_ids: Sequence[str]) -> None:
        """Runs this process stops executing (a shutdown): free for any process to take up at once."""
        if run_ids:
            async with self._db.engine.begin() as conn:
                await conn.execute(update(_RUN).where(and_(_RUN.c.id.in_(list(run_ids)), _RUN.c.status == "running"))
                                   .values(heartbeat_at=0.0))

    async def request_cancel(self, run_id: str) -> None:
        async with self._db.engine.begin() as conn:
            await conn.execute(update(_RUN).where(_RUN.c.id == run_id).values(cancel_requested=True))

    async def find_cached(self, user_id: str, cache_key: str, since: float) -> dict[str, Any] | None:
        """The newest completed run of this user with the same request, finished since ``since``."""
        q = (select(_RUN.c.id, _RUN.c.result).where(and_(
                _RUN.c.user_id == user_id, _RUN.c.cache_key == cache_key, _RUN.c.status == "completed",
                _RUN.c.finished_at >= since, _RUN.c.cached_from.is_(None),
             )).order_by(_RUN.c.finished_at.desc()).limit(1))
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(q)).mappings().first()
        return dict(row) if row else None

    async def set_result(self, run_id: str, result: dict[str, Any]) -> None:
        async with self._db.engine.begin() as conn:
            await conn.execute(update(_RUN).where(_RUN.c.id == run_id).values(result=result))

    # -- feedback --------------------------------------------------------------------------------
    async def add_comparisons(self, rows: Sequence[dict[str, Any]], result: tuple[str, dict[str, Any]] | None) -> None:
        """Store a user's verdicts (and the run's updated result) at once; a repeated vote is a 409."""
        try:
            async with self._db.engine.begin() as conn:
                if rows:
                    await conn.execute(insert(_CMP), list(rows))
                if result is not None:
                    await conn.execute(update(_RUN).where(_RUN.c.id == result[0]).values(result=result[1]))
        except IntegrityError:
            raise ConflictError("You have already given this feedback on this run.") from None

    async def comparisons(self) -> list[tuple[str, str, float, list[str]]]:
        q = select(_CMP.c.model_a, _CMP.c.model_b, _CMP.c.outcome, _CMP.c.tags).order_by(_CMP.c.id)
        async with self._db.engine.connect() as conn:
            return [(r[0], r[1], r[2], list(r[3] or [])) for r in (await conn.execute(q)).all()]


def _stage_costs(calls: Sequence[Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for c in calls:
        out[c["stage"]] = out.get(c["stage"], 0.0) + (c["cost_usd"] or 0.0)
    return out
