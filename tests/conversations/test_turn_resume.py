"""Taking up a turn whose process died, in one process on a real SQLite database: a turn recorded by a "dead"
turn log (its row, its first events and its thread's lease, as a killed process leaves them) is claimed by
exactly one of two peers, answered again with the prompt the turn had, stored once and paid once; its stream
restarts after the last stored event. A process that stalled while its turn was taken up writes nothing more
of it. A revoked caller, a lapsed lease and too many take-ups end the turn with an error."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select, update

from thinktank.accounts.principal import Principal
from thinktank.conversations.service import TURN_KEPT, TURN_LEASE, Conversations, Turn, TurnEvent, TurnOptions
from thinktank.conversations.threads import NewMessage
from thinktank.conversations.turn_log import TurnLog, TurnSpec, TurnTakenOver
from thinktank.conversations.turn_resume import RESTART_GAP, RESUME_JOB
from thinktank.events.bus import LocalBus
from thinktank.events.feed import FeedPublisher
from thinktank.store.tables import Thread, ThreadTurn

from .conftest import ALICE, Build, World, mock, rule

ANSWER = "The bridge is at the narrows, by the old mill."
STALE = 2.0


async def _world(build: Build) -> World:
    return await build([mock("chat", price=1000.0, rules=[rule("bridge", ANSWER)], replies=["The river runs west."])],
                       memory={"enabled": False})


def _peer(world: World, principals: Any = None) -> Conversations:
    """Another process on the same database (its own turn log, owner token and queue)."""
    conv = world.conv

    async def as_now(user_id: str, _key_id: str | None) -> Principal | None:
        return ALICE if user_id == ALICE.user_id else None

    return Conversations(world.db, world.clock, conv.config, conv.catalog, conv.gate, world.knowledge, None,
                         principals=principals or as_now, stale_after=STALE)


async def _dead_turn(world: World, thread_id: str, content: str, *, deltas: int = 3) -> tuple[Turn, TurnLog]:
    """A turn as a process that then stopped left it: recorded, ``deltas`` events stored, the thread's lease
    held; silent for longer than ``STALE`` seconds since."""
    dead = TurnLog(world.db, world.clock, FeedPublisher(LocalBus()), kept=TURN_KEPT, stale_after=STALE)
    assert await world.conv.threads.claim(thread_id, TURN_LEASE)
    turn = Turn(thread_id)
    await dead.started(turn, TurnSpec(ALICE.user_id, None, content, "chat", stream=True))
    for i in range(deltas):
        turn.emit("delta", content=f"draft{i} ")
    async with asyncio.timeout(10):
        while len(await world.conv.turn_log.events(turn.id)) < deltas:
            await asyncio.sleep(0.01)
    world.clock.advance(STALE + 1)
    return turn, dead


async def _messages(world: World, thread_id: str) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in await world.conv.threads.messages_of(thread_id)]


async def _settle(*peers: Conversations) -> None:
    for peer in peers:
        await peer.queue.settle(RESUME_JOB)
        await peer.drain()


async def test_one_of_two_peers_takes_the_turn_up_and_answers_it_once(build: Build) -> None:
    world = await _world(build)
    persona = await world.conv.personas.create(ALICE, name="Guide", system_prompt="You are a patient guide.")
    thread = await world.conv.threads.create(ALICE, model="chat", persona_id=persona.id)
    first = await (await world.conv.send(ALICE, None, thread.id, "Where is the river?", TurnOptions())).outcome()
    turn, _dead = await _dead_turn(world, thread.id, "And the bridge?")
    b, c = _peer(world), _peer(world)
    assert await b.resumption.stale() == [turn.id]
    won = await asyncio.gather(b.resumption.take_up(turn.id), c.resumption.take_up(turn.id))
    assert sorted(won) == [False, True]
    winner, loser = (b, c) if won[0] else (c, b)
    assert await winner.resumption.take_up(turn.id) is False  # (running here now)

    live = await winner.follow(ALICE, thread.id)
    assert isinstance(live, Turn)
    events = [e async for e in live.events(5)]  # a client that saw two more than were stored
    assert events[0].type == "restart" and events[0].id == 3 + RESTART_GAP
    assert events[0].data == {"reason": "interrupted", "resumes_after": 3}
    assert [e.id for e in events] == list(range(3 + RESTART_GAP, 3 + RESTART_GAP + len(events)))
    assert "".join(e.data["content"] for e in events if e.type == "delta") == ANSWER
    assert events[-1].type == "message" and events[-1].data["message"]["content"] == ANSWER
    await _settle(b, c)

    assert await _messages(world, thread.id) == [
        ("user", "Where is the river?"), ("assistant", "The river runs west."), ("user", "And the bridge?"),
        ("assistant", ANSWER)]
    # Asked once more, with the prompt the turn had: the persona, the history, the message.
    prompt = world.requests("chat")[-1].messages
    assert [(m.role, m.content) for m in prompt] == [
        ("system", "You are a patient guide."), ("user", "Where is the river?"), ("assistant", "The river runs west."),
        ("user", "And the bridge?")]
    assert len(world.requests("chat")) == 2
    rows = await world.usage_rows()
    assert [(m, st) for m, st, _ in rows] == [("chat", 200), ("chat", 200)]  # the first turn, the resumed one
    stored = await world.conv.threads.messages_of(thread.id)
    assert rows[0][2] == pytest.approx(first["message"]["cost_usd"])
    assert rows[1][2] == pytest.approx(stored[3].cost_usd) and stored[3].cost_usd > 0

    # Every process gives the same events afterwards: the three stored, the restart, the answer.
    replays = [[e.id for e in [x async for x in (await p.follow(ALICE, thread.id)).events(0)]] for p in (b, c)]
    assert replays[0] == replays[1] == [1, 2, 3, *[e.id for e in events]]
    assert await loser.resumption.stale() == []
    async with world.db.engine.connect() as conn:
        lease = (await conn.execute(select(Thread.busy_until).where(Thread.id == thread.id))).scalar_one()
    assert lease is None  # the thread takes turns again


async def test_the_sweep_queues_a_take_up_and_a_stalled_process_writes_nothing_more(build: Build) -> None:
    world = await _world(build)
    thread = await world.conv.threads.create(ALICE, model="chat")
    turn, stalled = await _dead_turn(world, thread.id, "And the bridge?")
    lost: list[Turn] = []
    stalled.on_lost = lost.append
    b = _peer(world)
    assert await b.resumption.sweep() == 1
    await _settle(b)
    assert await _messages(world, thread.id) == [("user", "And the bridge?"), ("assistant", ANSWER)]

    # The stalled process wakes up: its next write finds the turn is another's and stores nothing.
    turn.emit("delta", content="late")
    async with asyncio.timeout(10):
        while not lost:
            await asyncio.sleep(0.01)
    assert lost == [turn] and turn.taken_over
    assert "late" not in [e.data.get("content") for e in await world.conv.turn_log.events(turn.id)]
    guard = stalled.guard(turn)
    with pytest.raises(TurnTakenOver):
        await world.conv.threads.append(thread.id, [NewMessage("user", "And the bridge?"),
                                                    NewMessage("assistant", "draft")], guard=guard)
    assert len(await _messages(world, thread.id)) == 2  # still one answer


async def test_a_stalled_turn_learns_at_its_heartbeat_that_it_was_taken_up(build: Build) -> None:
    world = await _world(build)
    thread = await world.conv.threads.create(ALICE, model="chat")
    turn, stalled = await _dead_turn(world, thread.id, "And the bridge?")
    lost: list[Turn] = []
    stalled.on_lost = lost.append
    await stalled.beat()  # alive again before anyone took it: it stays its own
    assert lost == [] and await _peer(world).resumption.stale() == []
    world.clock.advance(STALE + 1)
    b = _peer(world)
    assert await b.resumption.take_up(turn.id)
    await stalled.beat()
    assert lost == [turn]
    await _settle(b)


async def test_a_turn_whose_caller_was_revoked_ends_with_an_error(build: Build) -> None:
    world = await _world(build)
    thread = await world.conv.threads.create(ALICE, model="chat")
    turn, _dead = await _dead_turn(world, thread.id, "And the bridge?")

    async def revoked(_user_id: str, _key_id: str | None) -> Principal | None:
        return None

    b = _peer(world, revoked)
    assert await b.resumption.take_up(turn.id)
    events = [e async for e in (await b.follow(ALICE, thread.id)).events(3)]
    assert [e.type for e in events] == ["restart", "error"]
    assert events[1].data["error"]["code"] == "key_revoked"
    assert await _messages(world, thread.id) == [] and len(world.requests("chat")) == 0
    assert await world.usage_rows() == []
    await _settle(b)
    out = await (await b.send(ALICE, None, thread.id, "Again?", TurnOptions())).outcome()  # the thread is free
    assert out["message"]["content"] == "The river runs west."


@pytest.mark.parametrize("left", ["lease lapsed", "taken up too often"])
async def test_a_turn_nobody_can_finish_ends_with_an_error(build: Build, left: str) -> None:
    world = await _world(build)
    thread = await world.conv.threads.create(ALICE, model="chat")
    turn, _dead = await _dead_turn(world, thread.id, "And the bridge?")
    async with world.db.session() as s:
        if left == "lease lapsed":
            await s.execute(update(Thread).where(Thread.id == thread.id).values(busy_until=world.clock.time() - 1))
        else:
            await s.execute(update(ThreadTurn).where(ThreadTurn.id == turn.id).values(attempts=3))
    b = _peer(world)
    assert await b.resumption.take_up(turn.id)
    events: list[TurnEvent] = [e async for e in (await b.follow(ALICE, thread.id)).events(3)]
    assert [e.type for e in events] == ["restart", "error"]
    assert events[1].data["error"]["code"] == "turn_interrupted"
    assert await _messages(world, thread.id) == [] and len(world.requests("chat")) == 0
    assert await b.resumption.stale() == []  # ended: nobody takes it up again


async def test_a_turn_answered_just_before_its_process_died_is_not_taken_up(build: Build) -> None:
    """Its messages stored (the turn's end not yet written): there is nothing left to answer."""
    world = await _world(build)
    thread = await world.conv.threads.create(ALICE, model="chat")
    turn, dead = await _dead_turn(world, thread.id, "And the bridge?")
    answered = [NewMessage("user", "And the bridge?"), NewMessage("assistant", "Here.")]
    await world.conv.threads.append(thread.id, answered, guard=dead.guard(turn))
    world.clock.advance(STALE + 1)
    b = _peer(world)
    assert await b.resumption.stale() == []
    assert await b.resumption.take_up(turn.id) is False
    assert await _messages(world, thread.id) == [("user", "And the bridge?"), ("assistant", "Here.")]
