"""Runs in the database: saved in steps, read back whole, and a run whose process died is marked."""

from __future__ import annotations

from thinktank.catalog import Catalog
from thinktank.config import parse_config
from thinktank.deliberation.run_store import RunStore
from thinktank.deliberation.runs import LiveRun
from thinktank.deliberation.service import STALE_AFTER, Deliberation
from thinktank.gateway.context import CallContext
from thinktank.gateway.router import Router
from thinktank.providers.base import ProviderContext
from thinktank.store.db import Database

from ..fakes.clock import FakeClock


def _run(router: Router, clock: FakeClock, run_id: str = "run_a") -> LiveRun:
    return LiveRun(id=run_id, user_id="usr_1", key_id=None, kind="ensemble", name="t", question="q", request={},
                   config={}, ctx=CallContext(), models=router, clock=clock, created_at=clock.time())


async def test_saved_in_steps_and_read_back(db: Database, ctx: ProviderContext, clock: FakeClock) -> None:
    router = Router(parse_config({"models": [{"name": "m", "provider": "mock", "options": {"replies": ["hi"]}}]}),
                    ctx)
    store = RunStore(db)
    run = _run(router, clock)
    run.emit("run_started")
    await store.create(run)
    from thinktank.types import Message

    await run.call("answer", "member A", "m", [Message(role="user", content="q")], timeout=5)
    assert await store.save(run) is False
    assert [e.seq for e in await store.events("run_a")] == [1, 2, 3]  # run_started, cost, model_answered
    await store.request_cancel("run_a")  # e.g. from another process: the next save reports it
    assert await store.save(run) is True
    run.emit("done", status="completed")
    run.status, run.result, run.finished_at = "completed", {"answer": "hi", "scores": {1: 0.5}}, clock.time()
    run.documents["plan.md"] = "# Plan"
    await store.save(run)
    record = await store.get("run_a")
    assert record is not None
    assert record["status"] == "completed" and record["result"] == {"answer": "hi", "scores": {"1": 0.5}}
    assert [c["answer"] for c in record["calls"]] == ["hi"] and record["events"] == 4
    assert record["documents"] == ["plan.md"] and await store.document("run_a", "plan.md") == "# Plan"
    assert [e.type for e in await store.events("run_a", after=3)] == ["done"]


async def test_a_run_left_running_by_a_dead_process_is_marked_interrupted(
    db: Database, ctx: ProviderContext, clock: FakeClock
) -> None:
    router = Router(parse_config({"models": [{"name": "m", "provider": "mock"}]}), ctx)
    store = RunStore(db)
    dead = _run(router, clock, "run_dead")
    dead.emit("run_started")
    await store.create(dead)  # ... and the process running it never saves again
    clock.advance(STALE_AFTER + 1)
    alive = _run(router, clock, "run_alive")
    await store.create(alive)
    service = Deliberation(router.config, Catalog(router), store, clock)
    await service.start_background()
    try:
        dead_record = await store.get("run_dead")
        assert dead_record is not None and dead_record["status"] == "failed"
        assert "Interrupted" in (dead_record["error"] or "")
        alive_record = await store.get("run_alive")
        assert alive_record is not None and alive_record["status"] == "running"
    finally:
        await service.close()
