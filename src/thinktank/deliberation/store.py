"""Persistence of runs, their calls, events and documents, and of the leaderboard's comparisons."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, and_, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..errors import ConflictError
from ..store.db import Database
from ..store.tables import Comparison, Run, RunCall, RunDocument, RunEvent
from .runs import Event, LiveRun, call_dict

__all__ = ["RunStore"]

_RUN: Table = Run.__table__  # type: ignore[assignment]
_CALLS: Table = RunCall.__table__  # type: ignore[assignment]
_EVENTS: Table = RunEvent.__table__  # type: ignore[assignment]
_DOCS: Table = RunDocument.__table__  # type: ignore[assignment]
_CMP: Table = Comparison.__table__  # type: ignore[assignment]


def _call_row(run_id: str, c: Any) -> dict[str, Any]:
    row = call_dict(c)
    row["run_id"] = run_id
    return row


class RunStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, run: LiveRun) -> None:
        async with self._db.engine.begin() as conn:
            await conn.execute(insert(_RUN), [self._run_row(run)])
            await self._append(conn, run, len(run.calls))

    @staticmethod
    def _run_row(run: LiveRun) -> dict[str, Any]:
        return {
            "id": run.id, "user_id": run.user_id, "key_id": run.key_id, "kind": run.kind, "name": run.name,
            "status": run.status, "question": run.question, "request": run.request, "config": run.config,
            "result": run.result, "error": run.error, "tags": run.tags, "cost_usd": run.cost,
            "prompt_tokens": run.prompt_tokens, "completion_tokens": run.completion_tokens,
            "cache_key": run.cache_key, "cached_from": run.cached_from, "cancel_requested": False,
            "created_at": run.created_at, "heartbeat_at": run.clock.time(), "finished_at": run.finished_at,
        }

    async def save(self, run: LiveRun) -> bool:
        """Write what is new (events, finished calls, totals, and at the end status, result and
        documents) in one transaction. Returns whether someone asked for the run to be cancelled."""
        # A call still in flight (no answer, no error) is written once it ends.
        pending = next((i for i, c in enumerate(run.calls) if c.answer is None and c.error is None), None)
        limit = len(run.calls) if pending is None or run.finished else pending
        async with self._db.engine.begin() as conn:
            await self._append(conn, run, max(limit, run.saved_calls))
            values: dict[str, Any] = {
                "heartbeat_at": run.clock.time(), "cost_usd": run.cost, "prompt_tokens": run.prompt_tokens,
                "completion_tokens": run.completion_tokens, "status": run.status,
            }
            if run.finished:
                values.update(result=run.result, error=run.error, finished_at=run.finished_at)
                if run.documents:
                    await conn.execute(insert(_DOCS), [
                        {"run_id": run.id, "name": n, "content": c, "created_at": run.finished_at}
                        for n, c in run.documents.items()
                    ])
            await conn.execute(update(_RUN).where(_RUN.c.id == run.id).values(**values))
            flag = (await conn.execute(select(_RUN.c.cancel_requested).where(_RUN.c.id == run.id))).scalar()
        return bool(flag)

    @staticmethod
    async def _append(conn: Any, run: LiveRun, call_limit: int) -> None:
        events = run.events[run.saved_events:]
        calls = run.calls[run.saved_calls:call_limit]
        if events:
            await conn.execute(insert(_EVENTS), [
                {"run_id": run.id, "seq": e.seq, "ts": e.ts, "type": e.type, "data": e.data} for e in events
            ])
        if calls:
            await conn.execute(insert(_CALLS), [_call_row(run.id, c) for c in calls])
        run.saved_events += len(events)
        run.saved_calls += len(calls)

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
        stale = and_(_RUN.c.status == "running", _RUN.c.heartbeat_at < now - max_silence)
        async with self._db.engine.begin() as conn:
            result = await conn.execute(update(_RUN).where(stale).values(
                status="failed", finished_at=now,
                error="Interrupted: the server running it stopped before it finished.",
            ))
        return int(result.rowcount or 0)

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
