"""RunStore: persistence of runs, their calls, events and documents, and of the leaderboard's comparisons.

The deliberation side of the database; the database itself (engine, tables, migrations) is :mod:`thinktank.store`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import Table, and_, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..errors import ConflictError
from ..store.db import Database
from ..store.raw import Batch, Insert, write
from ..store.tables import Comparison, Run, RunCall, RunDocument, RunEvent
from .runs import PAUSED, CallRecord, Event, LiveRun

__all__ = ["RunStore"]

_RUN: Table = Run.__table__  # type: ignore[assignment]
_CALLS: Table = RunCall.__table__  # type: ignore[assignment]
_EVENTS: Table = RunEvent.__table__  # type: ignore[assignment]
_DOCS: Table = RunDocument.__table__  # type: ignore[assignment]
_CMP: Table = Comparison.__table__  # type: ignore[assignment]


def _json(value: Any) -> str | None:
    """A JSON column's value as the drivers take it (text; SQL NULL for None)."""
    return None if value is None else orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _run_row(run: LiveRun) -> tuple[Any, ...]:
    return (
        run.id, run.user_id, run.key_id, run.kind, run.name, run.status, run.question, _json(run.request),
        _json(run.config), _json(run.result), run.error, _json(run.tags), run.cost, run.prompt_tokens,
        run.completion_tokens, run.cache_key, run.cached_from, False, run.created_at, run.clock.time(),
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
_UPDATE_PROGRESS = (
    "UPDATE runs SET heartbeat_at = ?, cost_usd = ?, prompt_tokens = ?, completion_tokens = ?, status = ? WHERE id = ?"
)
_UPDATE_FINAL = (
    "UPDATE runs SET heartbeat_at = ?, cost_usd = ?, prompt_tokens = ?, completion_tokens = ?, status = ?, "
    "result = ?, error = ?, finished_at = ? WHERE id = ?"
)
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
        batch = Batch()
        batch.insert(_RUN_INSERT, [_run_row(run)])
        added = self._append(batch, run, len(run.calls))
        checkpoint = self._checkpoint(batch, run)
        await write(self._db, batch)
        self._saved(run, added, checkpoint)

    async def save(self, run: LiveRun) -> bool:
        """Write what is new (events, finished calls, totals, and at the end status, result and
        documents) in one transaction. Returns whether someone asked for the run to be cancelled.

        Through the driver itself (:mod:`..store.raw`): a run's writes are on the path of every
        ensemble, and through SQLAlchemy Core they cost 6 to 7 ms of CPU."""
        # A call still in flight (no answer, no error) is written once it ends.
        pending = next((i for i, c in enumerate(run.calls) if c.answer is None and c.error is None), None)
        limit = len(run.calls) if pending is None or run.finished else pending
        batch = Batch()
        added = self._append(batch, run, max(limit, run.saved_calls))
        checkpoint = self._checkpoint(batch, run)
        totals = (run.clock.time(), run.cost, run.prompt_tokens, run.completion_tokens, run.status)
        if run.finished:
            batch.insert(_DOC_INSERT, [(run.id, n, c, run.finished_at) for n, c in run.documents.items()])
            batch.execute(_UPDATE_FINAL, (*totals, _json(run.result), run.error, run.finished_at, run.id))
        else:
            batch.execute(_UPDATE_PROGRESS, (*totals, run.id))
            batch.value(_SELECT_CANCEL, (run.id,))
        values = await write(self._db, batch)
        self._saved(run, added, checkpoint)
        return bool(values and values[0])

    @staticmethod
    def _append(batch: Batch, run: LiveRun, call_limit: int) -> tuple[int, int]:
        """Events and calls not written yet; how many of each (counted as saved once written)."""
        events = run.events[run.saved_events:]
        calls = run.calls[run.saved_calls:call_limit]
        batch.insert(_EVENT_INSERT, [(run.id, e.seq, e.ts, e.type, _json(e.data)) for e in events])
        batch.insert(_CALL_INSERT, [_call_row(run.id, c) for c in calls])
        return len(events), len(calls)

    @staticmethod
    def _checkpoint(batch: Batch, run: LiveRun) -> tuple[str, float | None] | None:
        """An agent's state to write with the events it goes with."""
        checkpoint = run.checkpoint
        if checkpoint is not None:
            batch.execute(_UPSERT_STATE, (run.id, checkpoint[0], checkpoint[1], run.clock.time()))
        return checkpoint

    @staticmethod
    def _saved(run: LiveRun, added: tuple[int, int], checkpoint: tuple[str, float | None] | None = None) -> None:
        run.saved_events += added[0]
        run.saved_calls += added[1]
        if checkpoint is not None and run.checkpoint is checkpoint:
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

    async def mark_interrupted(self, now: float, max_silence: float) -> int:
        """Runs still 'running' whose process stopped saving them (it crashed): failed, interrupted."""
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
        """A run that cannot go on (nobody executes it)."""
        async with self._db.engine.begin() as conn:
            await conn.execute(update(_RUN).where(_RUN.c.id == run_id)
                               .values(status="failed", finished_at=now, error=error))

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
