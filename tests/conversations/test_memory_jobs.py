"""Memory extraction as a job (``memory.extract``, a payload of ids): run again (as after a crash), it neither
asks the extractor again nor stores anything twice, even when a second run gets past the first one's check."""

from __future__ import annotations

from sqlalchemy import select

from thinktank.conversations.learning import EXTRACT_JOB
from thinktank.store.tables import MemoryFact, ThreadMessage

from .conftest import ALICE, Build, World
from .test_memory import FIRST, chat, extractions, say


async def _facts(world: World) -> list[tuple[str, int]]:
    async with world.db.engine.connect() as conn:
        return [(t, m) for t, m in (await conn.execute(select(MemoryFact.text, MemoryFact.mentions)
                                                        .order_by(MemoryFact.text))).all()]


async def test_a_retried_extraction_stores_nothing_twice(build: Build) -> None:
    world = await build([chat(FIRST, FIRST, FIRST)])
    thread = await world.conv.threads.create(ALICE, model="chat")
    out = await say(world, "I live in Lyon and I'd like answers in French.", thread_id=thread.id)
    message_id = out["user_message"]["id"]
    learned = await _facts(world)
    assert learned == [("Lives in Lyon.", 1), ("Prefers answers in French.", 1)] and extractions(world) == 1
    async with world.db.engine.connect() as conn:
        marked = (await conn.execute(select(ThreadMessage.memory_extracted_at)
                                     .where(ThreadMessage.id == message_id))).scalar_one()
    assert marked is not None

    payload = {"user_id": ALICE.user_id, "key_id": None, "thread_id": thread.id, "message_id": message_id,
               "model": "chat"}
    await world.conv.queue.defer(EXTRACT_JOB, payload)  # the same job again, as a retry after a crash
    await world.conv.drain()
    assert await _facts(world) == learned and extractions(world) == 1  # the marked message is skipped

    user = await world.conv.threads.message_of(thread.id, message_id)
    assert user is not None
    user.memory_extracted_at = None  # a second run that got past the check before the first one committed
    await world.conv.learner.extract(ALICE, None, thread.id, "chat", user)
    assert extractions(world) == 2 and await _facts(world) == learned  # asked, but nothing stored (no mention +1)
