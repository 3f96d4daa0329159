"""Going on with a run taken up from another process, step by step: the runner starts from the run's checkpoint
and the calls its unfinished step had finished are answered from their records (not asked, not paid, not
announced again); a save by a process whose run was taken up writes nothing; exactly one process claims it."""

from __future__ import annotations

import asyncio
import copy
import random
from typing import Any

import orjson
import pytest

from thinktank.clock import Clock
from thinktank.config import DebateConfig, EnsembleConfig
from thinktank.deliberation.debate import DebateRunner
from thinktank.deliberation.ensemble import EnsembleRunner
from thinktank.deliberation.experts import load_library
from thinktank.deliberation.replay import Replay
from thinktank.deliberation.run_store import RunStore, RunTakenOver
from thinktank.deliberation.runs import LiveRun
from thinktank.gateway.context import CallContext
from thinktank.providers.base import ProviderContext
from thinktank.store.db import Database

from ..fakes.clock import FakeClock
from .conftest import make_router, make_run, mock, requests_of, rule, user

Q = "Which river is the longest?"
MEMBERS = {"m1": "m1: the Nile, by most measures.", "m2": "m2: the Amazon, if you count its estuary.",
           "m3": "m3: the Nile."}
REVIEW = rule("FINAL RANKING", "Both are fine.\nFINAL RANKING:\n1. Response A\n2. Response B")


def _members(ctx: ProviderContext) -> Any:
    return make_router(ctx, [mock(m, rules=[REVIEW], replies=[text], input_price=1, output_price=2)
                             for m, text in MEMBERS.items()])


def _interrupted(done: LiveRun, keep: Any, state_keys: tuple[str, ...], router: Any, clock: Clock) -> LiveRun:
    """``done`` as another process would find it had it died during a step: the calls ``keep`` selects on its
    record (with the cost they had), its checkpoint as far as ``state_keys``."""
    calls = [copy.copy(c) for c in done.calls if keep(c)]
    assert done.state is not None
    state = orjson.loads(orjson.dumps({k: done.state[k] for k in state_keys if k in done.state}))
    again = make_run(router, clock, kind=done.kind)
    again.calls, again.state = calls, state
    again.cost = sum(c.cost_usd for c in calls)
    again.replay = Replay.of(calls, [], state)
    return again


async def test_an_ensemble_taken_up_in_its_review_asks_only_the_reviewer_that_had_not_answered(
    ctx: ProviderContext, clock: FakeClock,
) -> None:
    cfg = EnsembleConfig(name="t", members=list(MEMBERS), strategy="peer_review")
    first = make_run(_members(ctx), clock)
    whole = await EnsembleRunner(first, cfg, user(Q), random.Random(11), seed=11)()
    assert [c.role for c in first.calls if c.stage == "rank"] == ["reviewer A", "reviewer B", "reviewer C"]

    router = _members(ctx)  # the next process: nothing asked yet
    again = _interrupted(first, lambda c: c.role != "reviewer C", ("seed", "answers"), router, clock)
    assert again.state is not None and "ranking" not in again.state
    rest = await EnsembleRunner(again, cfg, user(Q), random.Random(99))()  # the seed on the checkpoint wins

    assert [len(requests_of(router, m)) for m in MEMBERS] == [0, 0, 1]  # m3's review only
    assert "FINAL RANKING" in requests_of(router, "m3")[0].messages[-1].content  # type: ignore[operator]
    assert orjson.loads(orjson.dumps(rest)) == orjson.loads(orjson.dumps(whole))  # the same reviews, order, answer
    assert [c.role for c in again.calls] == [c.role for c in first.calls]  # each call once on the record
    assert again.cost == pytest.approx(first.cost) == pytest.approx(sum(c.cost_usd for c in again.calls))
    assert [e.type for e in again.events if e.type == "model_answered"] == ["model_answered"]  # only the new call


async def test_an_ensemble_taken_up_after_its_ranking_only_synthesises(ctx: ProviderContext, clock: FakeClock) -> None:
    models = [mock(m, rules=[REVIEW], replies=[t]) for m, t in MEMBERS.items()]
    cfg = EnsembleConfig(name="t", members=list(MEMBERS), strategy="peer_review", chairman="chair")
    first = make_run(make_router(ctx, [*models, mock("chair", replies=["The Nile."])]), clock)
    whole = await EnsembleRunner(first, cfg, user(Q), random.Random(3), seed=3)()

    router = make_router(ctx, [*models, mock("chair", replies=["The Nile."])])
    again = _interrupted(first, lambda c: c.stage != "synthesis", ("seed", "answers", "ranking"), router, clock)
    again.replace_text = True  # the chairman's answer had begun to stream
    rest = await EnsembleRunner(again, cfg, user(Q), random.Random(3), seed=3)()
    assert [len(requests_of(router, m)) for m in (*MEMBERS, "chair")] == [0, 0, 0, 1]
    assert rest["answer"] == whole["answer"] == "The Nile."
    tokens = [e.data for e in again.events if e.type == "synthesis_token"]
    assert tokens[0].get("replace") is True and not any(t.get("replace") for t in tokens[1:])
    assert [e.data["stage"] for e in again.events if e.type == "stage_started"] == ["synthesis"]


async def test_a_debate_taken_up_in_its_second_round_keeps_the_first(ctx: ProviderContext, clock: FakeClock) -> None:
    def models() -> Any:
        return make_router(ctx, [
            mock("expert", rules=[rule("Your previous position", "STANCE: revise\nNow: a canal, clearly."),
                                  rule("Give your position", "A bridge, for cost.")]),
            mock("mod", rules=[rule("How much do they agree", '{"agreement": 0.1}'),
                               rule("follow-up question", "What about floods?"),
                               rule("Classify", '{"domains": ["engineering"], "kind": "design", "needs": []}')],
                 replies=["## Answer\nA canal."]),
        ])

    library = load_library()
    cfg = DebateConfig(name="d", models=["expert"], moderator="mod", experts=2, rounds=2,
                       personas=[library[0].name, library[1].name])
    first = make_run(models(), clock, kind="debate")
    whole = await DebateRunner(first, cfg, user(Q), library)()
    # Died in round 2 with one expert's answer in: round 1, its judge and the follow-up are on the checkpoint.
    one = next(c for c in first.calls if c.stage == "round 2" and c.role != "judge")
    router = models()
    again = _interrupted(first, lambda c: not c.stage.startswith(("round 2", "synthesis")) or c is one,
                         ("analysis", "panel", "rounds", "follow", "stopped"), router, clock)
    assert again.state is not None
    again.state.update(rounds=again.state["rounds"][:1], stopped=None, follow=whole["rounds"][1]["follow_up"])
    rest = await DebateRunner(again, cfg, user(Q), library)()
    asked = [r.messages[-1].content for r in requests_of(router, "expert")]
    assert len(asked) == 1 and "Your previous position" in str(asked[0])  # the other expert's round 2
    assert len(requests_of(router, "mod")) == 2  # round 2's judge, the synthesis
    assert orjson.loads(orjson.dumps(rest)) == orjson.loads(orjson.dumps(whole))
    assert [e.data["round"] for e in again.events if e.type == "round"] == [2]


def _live(run_id: str, store_clock: FakeClock) -> LiveRun:
    return LiveRun(id=run_id, user_id="usr_1", key_id=None, kind="ensemble", name="t", question="q", request={},
                   config={}, ctx=CallContext(), models=None, clock=store_clock,  # type: ignore[arg-type]
                   created_at=store_clock.time())


async def test_a_process_whose_run_was_taken_up_writes_nothing_more(db: Database, clock: FakeClock) -> None:
    store = RunStore(db)
    stalled = _live("run_stalled", clock)
    stalled.emit("run_started")
    await store.create(stalled)
    stalled.remember(seed=1)
    assert await store.save(stalled) is False  # its own heartbeat: written
    clock.advance(10)
    assert await store.stale(clock.time(), 5) == ["run_stalled"]
    assert await store.claim_stale("run_stalled", clock.time(), 5)  # another process takes it
    assert not await store.claim_stale("run_stalled", clock.time(), 5)  # ... and only one
    stalled.emit("stage_started", stage="answer")
    with pytest.raises(RunTakenOver):
        await store.save(stalled)
    stalled.status, stalled.finished_at = "completed", clock.time()
    with pytest.raises(RunTakenOver):
        await store.save(stalled)
    stored = await store.load("run_stalled")
    assert stored is not None and stored.row["status"] == "running" and stored.state == {"seed": 1}
    assert [e.type for e in stored.events] == ["run_started"]  # nothing of the stalled process after the claim
    assert await store.stale(clock.time(), 5) == []


async def test_exactly_one_of_many_processes_claims_an_interrupted_run(db_url: str, clock: FakeClock) -> None:
    dbs = [Database(db_url) for _ in range(4)]
    try:
        run = _live("run_contested", clock)
        await RunStore(dbs[0]).create(run)
        clock.advance(10)
        won = await asyncio.gather(*(RunStore(d).claim_stale("run_contested", clock.time(), 5) for d in dbs))
        assert sorted(won) == [False, False, False, True]
    finally:
        for d in dbs:
            await d.close()
