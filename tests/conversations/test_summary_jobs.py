"""Rolling summaries written ahead of need by the ``thread.summarise`` job, on SQLite and PostgreSQL: a growing
thread gets its summaries between turns and no turn folds inline; each job is recorded once as a request of the
thread's owner; a revoked key gets nothing written; a job racing turns never stores a duplicate or an older
summary; a job run again (as after a crash) writes nothing twice."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from itertools import count
from typing import Any

import pytest
from sqlalchemy import select

from thinktank.accounts.keys import KeyService
from thinktank.accounts.principal import Principal
from thinktank.accounts.schemas import KeyCreate
from thinktank.conversations.service import Turn, TurnEvent, TurnOptions
from thinktank.conversations.summaries import SUMMARY_JOB
from thinktank.providers.mock import MockProvider
from thinktank.store.tables import ThreadSummary, UsageRow, new_id
from thinktank.types import ChatRequest, ChatResponse, message_text

from .conftest import ALICE, Build, World, mock

FILLER = " It matters because of many reasons that I would like to explore with you at some length today."
_LAST_FOLDED = r"\(message (?P<n>\d+)\): [^\n]*\n</new_messages>"
MODELS = [
    mock("chat", context_window=480, price=1000.0),
    # the summary says which messages it folds: "SUMMARY THROUGH <seq of the last one>"
    mock("summ", price=2000.0, rules=[{"match": _LAST_FOLDED, "reply": r"SUMMARY THROUGH \g<n>", "template": True}]),
]
CONFIG: dict[str, Any] = {"conversations": {"reply_tokens": 40, "summary_tokens": 60, "summary_model": "summ"},
                          "memory": {"enabled": False}}


def content(i: int, longer: int = 1) -> str:
    return f"Tell me about topic-{i:02d}.{FILLER * longer}"


async def say(world: World, thread_id: str, text: str, principal: Principal = ALICE) -> tuple[list[str], Turn]:
    """A streamed turn to its end: the kinds of its events, and the turn."""
    turn = await world.conv.send(principal, None, thread_id, text, TurnOptions(stream=True))
    events: list[TurnEvent] = [e async for e in turn.events()]
    return [e.type for e in events], turn


async def turns_ended(world: World) -> None:
    """Every turn under way has ended, the jobs it queues queued (not run)."""
    await asyncio.gather(*list(world.conv._tasks))


async def grow_until_a_job_waits(world: World, thread_id: str, principal: Principal = ALICE) -> int:
    """Turns until one queues the summary job (which does not end by itself here); the number of turns."""
    for i in count(1):
        assert i <= 12, "no summary job was queued"
        await say(world, thread_id, content(i), principal)
        await turns_ended(world)
        if await world.conv.queue.active(SUMMARY_JOB):
            return i
    raise AssertionError


@asynccontextmanager
async def jobs_held(world: World, thread_id: str) -> AsyncIterator[None]:
    """The thread's summary jobs wait, behind a job holding their lock, until the block ends."""
    release, holding = asyncio.Event(), asyncio.Event()

    async def hold(_payload: dict[str, Any]) -> None:
        holding.set()
        await release.wait()

    name = f"t.hold.{new_id('h')}"
    world.conv.queue.register(name, hold)
    await world.conv.queue.defer(name, {}, lock=f"{SUMMARY_JOB}:{thread_id}")
    await holding.wait()
    try:
        yield
    finally:
        release.set()


class HeldCall:
    """The next call of a mock model waits until ``release`` is set (``arrived`` says it came)."""

    def __init__(self, world: World, model: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.arrived, self.release = asyncio.Event(), asyncio.Event()
        provider = next(d.model for d in world.router.deployments if d.name == model)
        assert isinstance(provider, MockProvider)
        complete: Callable[[ChatRequest], Awaitable[ChatResponse]] = provider.complete

        async def held(request: ChatRequest) -> ChatResponse:
            if not self.arrived.is_set():
                self.arrived.set()
                await self.release.wait()
            return await complete(request)

        monkeypatch.setattr(provider, "complete", held)


def folded_through(request: ChatRequest) -> int:
    """The seq of the last message a summary request folds."""
    found = re.search(_LAST_FOLDED, "\n".join(message_text(m) for m in request.messages))
    assert found is not None
    return int(found["n"])


async def usage(world: World) -> list[tuple[str | None, str | None, str, int, float]]:
    await world.usage.flush()
    async with world.db.session() as s:
        rows = await s.execute(select(UsageRow.user_id, UsageRow.key_id, UsageRow.model, UsageRow.status,
                                      UsageRow.cost_usd).order_by(UsageRow.id))
        return [(u, k, m, st, c) for u, k, m, st, c in rows.all()]


async def test_a_growing_thread_is_summarised_between_turns_and_no_turn_folds_inline(build: Build,
                                                                                      db_url: str) -> None:
    world = await build(MODELS, database=db_url, **CONFIG)
    thread = await world.conv.threads.create(ALICE, model="chat")
    written: list[ThreadSummary] = []
    for i in range(1, 11):
        asked = len(world.requests("summ"))
        kinds, turn = await say(world, thread.id, content(i))
        assert kinds[-1] == "message" and "summary" not in kinds, kinds  # nothing folded inline ...
        assert len(world.requests("summ")) == asked  # ... nor asked for by the turn
        stored = await world.conv.threads.messages_of(thread.id)
        assert turn.result is not None and turn.result["turn_cost_usd"] == pytest.approx(stored[-1].cost_usd)
        if written:  # the prompt: the newest summary, written between turns, then the rest word for word
            through = written[-1].through_seq
            prompt = world.chats("chat")[-1]
            assert f"SUMMARY THROUGH {through}" in prompt and f"first {through} messages" in prompt
            assert (stored[-1].context or {})["summary_through"] == through
            for m in stored[:-2]:  # (the last two: this turn's message, in the prompt, and its reply)
                assert (m.content in prompt) == (m.seq > through), m.seq
        await world.conv.drain()  # between turns: the summary job, if this turn queued one
        latest = await world.conv.threads.latest_summary(thread.id)
        if latest is not None and (not written or latest.id != written[-1].id):
            written.append(latest)
    assert len(written) >= 2, "the summary did not roll"
    summaries = await world.conv.threads.summaries_of(thread.id)
    assert [s.id for s in summaries] == [s.id for s in written]
    assert [s.through_seq for s in summaries] == sorted({s.through_seq for s in summaries})
    assert all(s.model == "summ" and s.content == f"SUMMARY THROUGH {s.through_seq}" for s in summaries)
    requests = world.requests("summ")
    assert len(requests) == len(summaries)
    assert "There is no summary yet" in "\n".join(message_text(m) for m in requests[0].messages)
    assert (f"<summary_so_far>\nSUMMARY THROUGH {summaries[0].through_seq}\n</summary_so_far>"
            in "\n".join(message_text(m) for m in requests[1].messages))
    # each job recorded once, as a request of the thread's owner for the summary model, with what it cost
    rows = await usage(world)
    summ = [r for r in rows if r[2] == "summ"]
    assert [r[:4] for r in summ] == [(ALICE.user_id, None, "summ", 200)] * len(summaries)
    assert [r[4] for r in summ] == pytest.approx([s.cost_usd for s in summaries])
    assert all(s.cost_usd > 0 for s in summaries)
    assert len([r for r in rows if r[2] == "chat"]) == 10 and len(rows) == 10 + len(summaries)


async def test_a_revoked_key_gets_no_summary_written(build: Build) -> None:
    world = await build(MODELS, **CONFIG)
    keys = KeyService(world.db, world.clock, world.auth)
    key = await keys.create(ALICE, KeyCreate(name="laptop"))
    laptop = await world.auth.principal_for(ALICE.user_id, key.id)
    assert laptop is not None and laptop.key_id == key.id
    thread = await world.conv.threads.create(laptop, model="chat")
    async with jobs_held(world, thread.id):
        await grow_until_a_job_waits(world, thread.id, laptop)
        await keys.revoke(ALICE, key.id)
    await world.conv.drain()  # the job ran, as the key now is
    assert await world.conv.queue.active(SUMMARY_JOB) == 0
    assert await world.conv.threads.summaries_of(thread.id) == [] and world.requests("summ") == []
    assert not [r for r in await usage(world) if r[2] == "summ"]


async def test_a_job_that_finishes_after_a_turn_folded_as_far_stores_nothing(
    build: Build, db_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = await build(MODELS, database=db_url, **CONFIG)
    call = HeldCall(world, "summ", monkeypatch)
    thread = await world.conv.threads.create(ALICE, model="chat")
    n = await grow_until_a_job_waits(world, thread.id)
    await call.arrived.wait()  # the job asks the summary model ... which takes its time
    # a turn with a long message has less room: it cannot wait, and writes its own summary, folding at least
    # as much as the job (its room is smaller)
    kinds, _ = await say(world, thread.id, content(n + 1, longer=4))
    assert "summary" in kinds
    by_turn = await world.conv.threads.latest_summary(thread.id)
    assert by_turn is not None and by_turn.content == f"SUMMARY THROUGH {by_turn.through_seq}"
    job_through = folded_through(world.requests("summ")[0])
    assert job_through <= by_turn.through_seq
    # another turn (its history, with that long message and its long reply, needs folding again): it rolls from
    # there, and may queue the next job, which waits for the one under way
    kinds, _ = await say(world, thread.id, content(n + 2))
    inline = 1 + kinds.count("summary")
    latest = await world.conv.threads.latest_summary(thread.id)
    assert latest is not None and f"SUMMARY THROUGH {latest.through_seq}" in world.chats("chat")[-1]
    call.release.set()
    await world.conv.drain()
    summaries = await world.conv.threads.summaries_of(thread.id)
    throughs = [s.through_seq for s in summaries]
    assert throughs == sorted(set(throughs)) and throughs[0] == by_turn.through_seq  # no duplicate, none older
    assert summaries[0].id == by_turn.id
    assert len(world.requests("summ")) == len(summaries) + 1  # the job's summary came too late: not stored
    # paid all the same (a record of its own, as every job); the turns' summaries were paid with the turns
    assert len([r for r in await usage(world) if r[2] == "summ"]) == len(world.requests("summ")) - inline


async def test_a_turn_that_folds_after_the_job_stored_never_stores_an_older_summary(
    build: Build, db_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = await build(MODELS, database=db_url, **CONFIG)
    thread = await world.conv.threads.create(ALICE, model="chat")
    async with jobs_held(world, thread.id):
        n = await grow_until_a_job_waits(world, thread.id)
        call = HeldCall(world, "summ", monkeypatch)  # the next summary call: the turn's own
        turn = await world.conv.send(ALICE, None, thread.id, content(n + 1, longer=4), TurnOptions(stream=True))
        await call.arrived.wait()  # the turn asks for its summary (the job's has not been written) ...
    await world.conv.queue.settle(SUMMARY_JOB)  # ... and the job, let go, writes its own meanwhile
    by_job = await world.conv.threads.latest_summary(thread.id)
    assert by_job is not None
    call.release.set()
    kinds = [e.type async for e in turn.events()]
    assert "summary" in kinds and kinds[-1] == "message"
    turn_through = folded_through(world.requests("summ")[0])
    assert turn_through >= by_job.through_seq  # (less room: it folds at least as much)
    await world.conv.drain()
    summaries = await world.conv.threads.summaries_of(thread.id)
    throughs = [s.through_seq for s in summaries]
    assert throughs == sorted(set(throughs)) and summaries[0].id == by_job.id  # no duplicate, none older
    # the turn's summary is stored only if it folds more (its prompt used it either way)
    assert (turn_through in throughs[1:]) == (turn_through > by_job.through_seq)
    assert f"SUMMARY THROUGH {turn_through}" in world.chats("chat")[-1]


async def test_a_job_run_again_writes_nothing_twice(build: Build) -> None:
    world = await build(MODELS, **CONFIG)
    thread = await world.conv.threads.create(ALICE, model="chat")
    for i in count(1):
        assert i <= 12, "no summary was written"
        _, turn = await say(world, thread.id, content(i))
        await world.conv.drain()
        if await world.conv.threads.latest_summary(thread.id) is not None:
            break
    [summary] = await world.conv.threads.summaries_of(thread.id)
    assert turn.outlook is not None
    payload = {"user_id": ALICE.user_id, "key_id": None, "thread_id": thread.id, "model": "chat",
               "room": turn.outlook.room}
    for _ in range(2):  # the same job again, as after a crash (the second waits for the first: their lock)
        await world.conv.queue.defer(SUMMARY_JOB, payload, lock=f"{SUMMARY_JOB}:{thread.id}")
    await world.conv.drain()
    assert [s.id for s in await world.conv.threads.summaries_of(thread.id)] == [summary.id]
    assert len(world.requests("summ")) == 1  # nothing left to fold: not asked again
    # a run that got past its look before the first one stored: asked again, but nothing stored
    folded = await world.conv.threads.messages_of(thread.id, after=0, limit=summary.through_seq)
    async with world.conv.gate.admitted(ALICE, None, "summ", 100) as admission:
        again, stored = await world.conv.summaries.write(thread.id, None, folded, "summ", admission.ctx)
    assert not stored and again.through_seq == summary.through_seq and len(world.requests("summ")) == 2
    assert [s.id for s in await world.conv.threads.summaries_of(thread.id)] == [summary.id]


async def test_summaries_stored_at_once_only_grow(build: Build, db_url: str) -> None:
    world = await build(MODELS, database=db_url, conversations={**CONFIG["conversations"], "summary_ahead": 0},
                        memory={"enabled": False})
    thread = await world.conv.threads.create(ALICE, model="chat")
    for i in range(1, 5):
        await say(world, thread.id, content(i))
    messages = await world.conv.threads.messages_of(thread.id)

    def summary(through: int) -> ThreadSummary:
        return ThreadSummary(id=new_id("sum"), thread_id=thread.id, through_seq=through, content=f"S{through}",
                             model="summ", created_at=world.clock.time())

    wanted = [2, 6, 4, 6, 2, 6]
    stored = await asyncio.gather(*(world.conv.threads.add_summary(summary(t), last_id=messages[t - 1].id)
                                    for t in wanted))
    throughs = [s.through_seq for s in await world.conv.threads.summaries_of(thread.id)]
    assert throughs == sorted(set(throughs)) and throughs[-1] == 6 and sum(stored) == len(throughs)
    assert sum(ok for ok, t in zip(stored, wanted, strict=True) if t == 6) == 1
    # older, or folding a message that is no longer the thread's (an edit replaced it): not stored
    assert not await world.conv.threads.add_summary(summary(4), last_id=messages[3].id)
    assert not await world.conv.threads.add_summary(summary(8), last_id=messages[6].id)  # (not the 8th message)
    edit = await world.conv.send(ALICE, None, thread.id, "Something else.", TurnOptions(replaces=messages[6].id))
    await edit.outcome()
    assert not await world.conv.threads.add_summary(summary(8), last_id=messages[7].id)  # (replaced)
    new = await world.conv.threads.messages_of(thread.id)
    assert await world.conv.threads.add_summary(summary(8), last_id=new[7].id)
