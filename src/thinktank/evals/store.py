"""EvalStore: the evaluations' persistence. Datasets per owner, the answer cache, and the evaluation runs as the
runs table holds them (an evaluation is a run of kind ``evaluation``: its record, events and calls are the
deliberation's :class:`~thinktank.deliberation.run_store.RunStore`'s)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, and_, delete, insert, select

from ..clock import Clock
from ..store.db import Database
from ..store.eval_tables import EvalAnswer, EvalDataset
from ..store.tables import Run, new_id

__all__ = ["KIND", "CachedAnswer", "EvalStore", "KeptAnswer"]

KIND = "evaluation"
"""The kind of an evaluation's run."""

_DATASETS: Table = EvalDataset.__table__  # type: ignore[assignment]
_ANSWERS: Table = EvalAnswer.__table__  # type: ignore[assignment]
_RUNS: Table = Run.__table__  # type: ignore[assignment]
_CHUNK = 500
"""Item keys per query of the cache."""


@dataclass(frozen=True)
class KeptAnswer:
    """An answer (or a failure) to keep in the cache."""

    user_id: str
    candidate: str
    item_key: str
    params: str
    text: str | None
    error: str | None
    cost_usd: float
    latency_ms: float
    citations: Sequence[Any] | None
    prompt_tokens: int
    completion_tokens: int
    run_id: str


@dataclass(frozen=True)
class CachedAnswer:
    """A candidate's answer to a question as the cache holds it (``run_id``: the evaluation that asked)."""

    text: str
    cost_usd: float
    latency_ms: float
    citations: list[Any]
    prompt_tokens: int
    completion_tokens: int
    run_id: str | None


class EvalStore:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    # -- datasets --------------------------------------------------------------------------------
    async def add_dataset(self, user_id: str, name: str, items: list[dict[str, Any]], tags: list[str],
                          errors: list[dict[str, Any]], warnings: list[str]) -> dict[str, Any]:
        row = {"id": new_id("eds"), "user_id": user_id, "name": name, "items": items, "item_count": len(items),
               "tags": tags, "errors": errors, "warnings": warnings, "created_at": self._clock.time()}
        async with self._db.engine.begin() as conn:
            await conn.execute(insert(_DATASETS), [row])
        return row

    async def datasets(self, user_id: str, *, limit: int = 100, before: float | None = None) -> list[dict[str, Any]]:
        """The owner's datasets, newest first (without their items)."""
        cols = [_DATASETS.c[k] for k in ("id", "name", "item_count", "tags", "created_at")]
        q = select(*cols).where(_DATASETS.c.user_id == user_id).order_by(_DATASETS.c.created_at.desc()).limit(limit)
        if before is not None:
            q = q.where(_DATASETS.c.created_at < before)
        async with self._db.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings().all()]

    async def dataset(self, user_id: str, dataset_id: str) -> dict[str, Any] | None:
        """The owner's dataset with its items (None: no such dataset of theirs)."""
        q = select(_DATASETS).where(and_(_DATASETS.c.id == dataset_id, _DATASETS.c.user_id == user_id))
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(q)).mappings().first()
        return dict(row) if row is not None else None

    async def delete_dataset(self, user_id: str, dataset_id: str) -> bool:
        q = delete(_DATASETS).where(and_(_DATASETS.c.id == dataset_id, _DATASETS.c.user_id == user_id))
        async with self._db.engine.begin() as conn:
            return bool((await conn.execute(q)).rowcount)

    # -- the answer cache ------------------------------------------------------------------------
    async def cached(self, user_id: str, params: str, wanted: Iterable[tuple[str, str]]
                     ) -> dict[tuple[str, str], CachedAnswer]:
        """The answers this user's evaluations got, by (candidate, item key), asked with ``params`` (failures left
        out)."""
        by_candidate: dict[str, list[str]] = {}
        for candidate, key in wanted:
            by_candidate.setdefault(candidate, []).append(key)
        out: dict[tuple[str, str], CachedAnswer] = {}
        async with self._db.engine.connect() as conn:
            for candidate, keys in by_candidate.items():
                for start in range(0, len(keys), _CHUNK):
                    q = select(_ANSWERS).where(and_(
                        _ANSWERS.c.user_id == user_id, _ANSWERS.c.candidate == candidate,
                        _ANSWERS.c.params == params, _ANSWERS.c.item_key.in_(keys[start:start + _CHUNK]),
                        _ANSWERS.c.text.is_not(None)))
                    for row in (await conn.execute(q)).mappings().all():
                        out[(candidate, row["item_key"])] = CachedAnswer(
                            row["text"], row["cost_usd"], row["latency_ms"], list(row["citations"] or []),
                            row["prompt_tokens"], row["completion_tokens"], row["run_id"])
        return out

    async def keep(self, rows: Sequence[KeptAnswer]) -> None:
        """Keep answers (and failures) in the cache, in one transaction. An answer already kept stays (the first
        one wins); a failure kept is replaced by an answer."""
        unique: dict[tuple[str, str, str, str], KeptAnswer] = {}
        for r in rows:  # one row per key in a statement (an answer before a failure)
            key = (r.user_id, r.candidate, r.item_key, r.params)
            if key not in unique or (unique[key].text is None and r.text is not None):
                unique[key] = r
        if not unique:
            return
        now = self._clock.time()
        values = [{**dataclasses.asdict(r), "citations": list(r.citations) if r.citations else None,
                   "created_at": now} for r in unique.values()]
        from sqlalchemy.dialects import postgresql, sqlite

        dialect = postgresql if self._db.dialect == "postgresql" else sqlite
        keys = ["user_id", "candidate", "item_key", "params"]
        stmt = dialect.insert(_ANSWERS)
        stmt = stmt.on_conflict_do_update(
            index_elements=keys, set_={k: stmt.excluded[k] for k in values[0] if k not in keys},
            where=and_(_ANSWERS.c.text.is_(None), stmt.excluded["text"].is_not(None)))
        async with self._db.engine.begin() as conn:
            await conn.execute(stmt, values)

    # -- evaluation runs -------------------------------------------------------------------------
    async def runs(self, user_id: str, *, limit: int = 50, before: float | None = None,
                   status: str | None = None) -> list[dict[str, Any]]:
        """The user's evaluations, newest first, as the list shows them."""
        cols = [_RUNS.c[k] for k in ("id", "name", "status", "config", "cost_usd", "created_at", "finished_at")]
        q = (select(*cols).where(and_(_RUNS.c.user_id == user_id, _RUNS.c.kind == KIND))
             .order_by(_RUNS.c.created_at.desc()).limit(limit))
        if before is not None:
            q = q.where(_RUNS.c.created_at < before)
        if status is not None:
            q = q.where(_RUNS.c.status == status)
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(q)).mappings().all()
        out = []
        for r in rows:
            config = r["config"] if isinstance(r["config"], dict) else {}
            out.append({"id": r["id"], "name": r["name"], "status": r["status"],
                        "candidates": list(config.get("candidates") or []), "judges": list(config.get("judges") or []),
                        "items": config.get("items"), "cost_usd": r["cost_usd"], "created_at": r["created_at"],
                        "finished_at": r["finished_at"]})
        return out

    async def run(self, run_id: str) -> dict[str, Any] | None:
        """An evaluation's owner, status, request, configuration and result (no calls, no events), or None."""
        cols = [_RUNS.c[k] for k in ("id", "user_id", "kind", "status", "request", "config", "result")]
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(select(*cols).where(_RUNS.c.id == run_id))).mappings().first()
        return dict(row) if row is not None and row["kind"] == KIND else None
