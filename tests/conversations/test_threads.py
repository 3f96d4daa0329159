"""Threads and turns on a real database: what is stored (model, tokens, cost, context), streaming, cost
accounting through the gate, ownership, bad input, export and import."""

from __future__ import annotations

from typing import Any

import pytest

from thinktank.accounts.principal import Principal
from thinktank.conversations.exports import ThreadImport, export_json, export_markdown, import_thread
from thinktank.conversations.service import TurnOptions
from thinktank.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    NotFoundError,
    RateLimitError,
    UpstreamServerError,
)
from thinktank.knowledge.ingest import Source

from .conftest import ADMIN, ALICE, BOB, EXTRACT, Build, World, mock, rule

MODELS = [
    mock("chat", price=1000.0, rules=[rule(EXTRACT, '{"memories": []}')],
         replies=["Hello! Paris is the capital of France.", "It has about two million people."]),
    mock("other", replies=["from the other model"]),
]


async def turn(world: World, who: Principal, thread_id: str, content: str, **options: object) -> dict[str, Any]:
    t = await world.conv.send(who, "127.0.0.1", thread_id, content, TurnOptions(**options))  # type: ignore[arg-type]
    return await t.outcome()


async def test_a_turn_is_stored_with_model_tokens_cost_and_accounted(build: Build) -> None:
    world = await build(MODELS)
    thread = await world.conv.threads.create(ALICE, model="chat")
    assert thread.title == ""
    out = await turn(world, ALICE, thread.id, "What is the capital of France?")
    user, reply = out["user_message"], out["message"]
    assert isinstance(user, dict) and isinstance(reply, dict)
    assert (user["seq"], user["role"], user["content"]) == (1, "user", "What is the capital of France?")
    assert (reply["seq"], reply["role"], reply["content"]) == (2, "assistant", "Hello! Paris is the capital of France.")
    assert reply["model"] == "chat" and reply["deployment"] == "chat" and reply["finish_reason"] == "stop"
    usage = reply["usage"]
    assert isinstance(usage, dict) and usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    # $1000 per million tokens either way
    assert reply["cost_usd"] == pytest.approx((usage["prompt_tokens"] + usage["completion_tokens"]) / 1000)
    assert reply["citations"] == [] and reply["context"] == {"memory_ids": [], "summary_through": 0}
    stored = await world.conv.threads.messages(ALICE, thread.id)
    assert [m.id for m in stored] == [user["id"], reply["id"]]
    assert stored[1].cost_usd == reply["cost_usd"]
    # the thread is named after its first message
    assert (await world.conv.threads.get(ALICE, thread.id)).title == "What is the capital of France?"
    await world.conv.drain()  # the memory extraction (nothing found) ran under its own admission
    rows = await world.usage_rows()
    assert [(m, st) for m, st, _ in rows] == [("chat", 200), ("chat", 200)]
    assert rows[0][2] == pytest.approx(reply["cost_usd"])
    # the second turn sees the first
    await turn(world, ALICE, thread.id, "And its population?")
    last = world.chats("chat")[-1]
    assert "What is the capital of France?" in last and "Hello! Paris" in last and last.endswith("And its population?")


async def test_a_streamed_turn_sends_deltas_then_the_stored_message(build: Build) -> None:
    world = await build(MODELS)
    thread = await world.conv.threads.create(ALICE, model="chat")
    t = await world.conv.send(ALICE, None, thread.id, "Hi", TurnOptions(stream=True))
    events = [e async for e in t.events()]
    deltas = [e.data["content"] for e in events if e.type == "delta"]
    assert "".join(deltas) == "Hello! Paris is the capital of France." and len(deltas) > 3
    assert events[-1].type == "message" and [e.type for e in events].count("message") == 1
    reply = events[-1].data["message"]
    assert reply["content"] == "Hello! Paris is the capital of France."
    assert reply["usage"]["completion_tokens"] > 0 and reply["cost_usd"] > 0
    assert events[-1].type == "message" and events[-1].json().startswith(b'{"type":"message"')
    assert (await t.outcome())["message"] == reply


async def test_a_turn_can_use_another_model_and_unknown_models_are_404(build: Build) -> None:
    world = await build(MODELS)
    with pytest.raises(ModelNotFoundError):
        await world.conv.threads.create(ALICE, model="nope")
    thread = await world.conv.threads.create(ALICE, model="chat")
    out = await turn(world, ALICE, thread.id, "Hi", model="other")
    assert out["message"]["model"] == "other" and out["message"]["content"] == "from the other model"
    with pytest.raises(ModelNotFoundError):
        await turn(world, ALICE, thread.id, "Hi", model="nope")
    limited = Principal(user_id=ALICE.user_id, role="member", allowed_models=frozenset({"other"}))
    with pytest.raises(ModelNotFoundError):  # a key that may not use the thread's model
        await turn(world, limited, thread.id, "Hi")
    with pytest.raises(ModelNotFoundError):
        await world.conv.threads.update(ALICE, thread.id, model="nope")


async def test_bad_input_is_refused_before_anything_is_written(build: Build) -> None:
    world = await build(MODELS)
    with pytest.raises(InvalidRequestError, match="title"):
        await world.conv.threads.create(ALICE, model="chat", title="x" * 201)
    thread = await world.conv.threads.create(ALICE, model="chat", title="t" * 200)
    for empty in ("", "   \n"):
        with pytest.raises(InvalidRequestError, match="empty"):
            await turn(world, ALICE, thread.id, empty)
    with pytest.raises(InvalidRequestError, match="title"):
        await world.conv.threads.update(ALICE, thread.id, title="y" * 300)
    with pytest.raises(NotFoundError):
        await world.conv.threads.create(ALICE, model="chat", persona_id="per_nope")
    with pytest.raises(NotFoundError):
        await world.conv.threads.create(ALICE, model="chat", knowledge_bases=["nope"])
    assert await world.conv.threads.messages(ALICE, thread.id) == []
    assert (await world.conv.threads.get(ALICE, thread.id)).title == "t" * 200


async def test_another_users_thread_does_not_exist_for_them(build: Build) -> None:
    world = await build(MODELS)
    thread = await world.conv.threads.create(ALICE, model="chat")
    await turn(world, ALICE, thread.id, "Hi")
    for who in (BOB, ADMIN):  # admins get no special access to threads
        with pytest.raises(NotFoundError):
            await world.conv.threads.get(who, thread.id)
        with pytest.raises(NotFoundError):
            await world.conv.threads.messages(who, thread.id)
        with pytest.raises(NotFoundError):
            await turn(world, who, thread.id, "Hi")
        with pytest.raises(NotFoundError):
            await world.conv.threads.update(who, thread.id, title="mine now")
        with pytest.raises(NotFoundError):
            await world.conv.threads.delete(who, thread.id)
        assert await world.conv.threads.list_threads(who) == []
    assert len(await world.conv.threads.messages(ALICE, thread.id)) == 2


async def test_list_rename_archive_delete(build: Build) -> None:
    world = await build(MODELS)
    a = await world.conv.threads.create(ALICE, model="chat", title="first")
    world.clock.advance(1)
    b = await world.conv.threads.create(ALICE, model="chat", title="second")
    world.clock.advance(1)
    await turn(world, ALICE, a.id, "Hi")
    listed = await world.conv.threads.list_threads(ALICE)
    assert [t["id"] for t in listed] == [a.id, b.id]  # the most recently active first
    assert listed[0]["message_count"] == 2 and listed[0]["cost_usd"] > 0 and listed[1]["message_count"] == 0
    renamed = await world.conv.threads.update(ALICE, b.id, title="  renamed  ", archived=True)
    assert renamed.title == "renamed" and renamed.archived
    assert [t["id"] for t in await world.conv.threads.list_threads(ALICE)] == [a.id]
    assert [t["id"] for t in await world.conv.threads.list_threads(ALICE, archived=True)] == [b.id]
    assert len(await world.conv.threads.list_threads(ALICE, archived=None)) == 2
    await world.conv.threads.delete(ALICE, a.id)
    with pytest.raises(NotFoundError):
        await world.conv.threads.get(ALICE, a.id)
    with pytest.raises(NotFoundError):
        await world.conv.threads.delete(ALICE, a.id)


async def test_a_failed_turn_stores_nothing_and_is_accounted(build: Build) -> None:
    world = await build([mock("chat", fail_first=1, fail_status=503), *MODELS[1:]])
    thread = await world.conv.threads.create(ALICE, model="chat")
    t = await world.conv.send(ALICE, None, thread.id, "Hi", TurnOptions(stream=True))
    events = [e async for e in t.events()]
    assert [e.type for e in events] == ["error"] and events[0].data["error"]["type"]
    with pytest.raises(UpstreamServerError):
        await t.outcome()
    assert await world.conv.threads.messages(ALICE, thread.id) == []
    assert [(m, st) for m, st, _ in await world.usage_rows()] == [("chat", 502)]
    out = await turn(world, ALICE, thread.id, "Hi again")  # the thread is free again
    assert out["user_message"]["seq"] == 1


async def test_budgets_apply_to_turns(build: Build) -> None:
    from thinktank.accounts.budget_backends import BudgetSpec

    world = await build(MODELS)
    poor = Principal(user_id=ALICE.user_id, role="member",
                     budgets=(BudgetSpec("user", ALICE.user_id, 0.000001, "total", "user alice"),))
    thread = await world.conv.threads.create(ALICE, model="chat")
    with pytest.raises(RateLimitError, match="udget"):
        await turn(world, poor, thread.id, "Hi")
    assert await world.conv.threads.messages(ALICE, thread.id) == []


async def test_grounded_turn_stores_the_retrieved_context_and_citations(build: Build) -> None:
    world = await build([mock("chat", rules=[rule(EXTRACT, '{"memories": []}'),
                                             rule("passage", "Refunds take 14 days [1].")])])
    kb = (await world.knowledge.create(ALICE, "support")).kb
    await world.knowledge.add(ALICE, kb.id, [
        Source("refunds.md", b"# Refunds\n\nRefunds are paid back within 14 days of the return."),
        Source("shipping.md", b"# Shipping\n\nShipping is free for orders over 50 euros."),
    ])
    thread = await world.conv.threads.create(ALICE, model="chat", knowledge_bases=["support"])
    assert thread.knowledge_bases == [kb.id]
    with pytest.raises(NotFoundError):  # Bob cannot read Alice's knowledge base
        await world.conv.threads.create(BOB, model="chat", knowledge_bases=[kb.id])
    out = await turn(world, ALICE, thread.id, "How long do refunds take?")
    reply = out["message"]
    assert isinstance(reply, dict)
    assert reply["content"] == "Refunds take 14 days [1]."
    retrieved = reply["context"]["retrieved"]
    assert retrieved[0]["source"] == "refunds.md" and "14 days" in retrieved[0]["snippet"]
    assert [c["index"] for c in reply["citations"]] == [1] and reply["citations"][0]["source"] == "refunds.md"
    prompt = world.chats("chat")[-1]
    assert "Refunds are paid back within 14 days" in prompt
    stored = (await world.conv.threads.messages(ALICE, thread.id))[1]
    assert stored.context is not None and stored.context["citations"] == reply["citations"]


async def test_export_json_then_import_gives_an_equal_thread(build: Build) -> None:
    world = await build(MODELS)
    persona = await world.conv.personas.create(ALICE, name="guide", system_prompt="You are a guide.")
    thread = await world.conv.threads.create(ALICE, model="chat", title="Trip", persona_id=persona.id)
    await turn(world, ALICE, thread.id, "Hi")
    await turn(world, ALICE, thread.id, "More?")
    messages = await world.conv.threads.messages_of(thread.id)
    exported = export_json(thread, persona, messages, [], world.clock.time())
    copy, warnings = await import_thread(world.conv.threads, ALICE, ThreadImport.model_validate(exported))
    assert warnings == [] and copy.id != thread.id
    again = export_json(copy, persona, await world.conv.threads.messages_of(copy.id), [], world.clock.time())

    def strip(e: dict[str, object]) -> dict[str, object]:
        thread_part = {k: v for k, v in e["thread"].items() if k != "id"}  # type: ignore[attr-defined]
        msgs = [{k: v for k, v in m.items() if k not in ("id", "thread_id")} for m in e["messages"]]  # type: ignore[attr-defined]
        return {**e, "thread": thread_part, "messages": msgs}

    assert strip(again) == strip(exported)
    # Bob imports it: the persona is Alice's, so his copy has none (and says so)
    bobs, warnings = await import_thread(world.conv.threads, BOB, ThreadImport.model_validate(exported))
    assert bobs.persona_id is None and bobs.user_id == BOB.user_id and "persona" in warnings[0]
    markdown = export_markdown(thread, persona, messages, [])
    assert markdown.startswith("# Trip\n") and "- Persona: guide" in markdown
    assert markdown.count("### User") == 2 and markdown.count("### Assistant") == 2
    assert "Hello! Paris is the capital of France." in markdown and "`chat`" in markdown


async def test_a_malformed_import_writes_nothing(build: Build) -> None:
    world = await build(MODELS)
    thread = await world.conv.threads.create(ALICE, model="chat")
    await turn(world, ALICE, thread.id, "Hi")
    good = export_json(thread, None, await world.conv.threads.messages_of(thread.id), [], 0.0)
    bad_seq = {**good, "messages": [{**good["messages"][0], "seq": 2}, good["messages"][1]]}
    bad_summary = {**good, "summaries": [{"through_seq": 9, "content": "x"}]}
    unknown_model = {**good, "thread": {**good["thread"], "model": "nope"}}
    long_title = {**good, "thread": {**good["thread"], "title": "x" * 201}}
    for bad, error in ((bad_seq, InvalidRequestError), (bad_summary, InvalidRequestError),
                       (unknown_model, ModelNotFoundError), (long_title, InvalidRequestError)):
        with pytest.raises(error):
            await import_thread(world.conv.threads, ALICE, ThreadImport.model_validate(bad))
    assert len(await world.conv.threads.list_threads(ALICE, archived=None)) == 1


async def test_a_turn_holds_its_thread_renews_the_lease_as_it_goes_and_lets_go(build: Build) -> None:
    """The lease (threads.busy_until) that keeps other processes out: taken when the turn is admitted,
    renewed while the reply streams (here it takes longer than one lease), cleared at the end."""
    from sqlalchemy import select

    from thinktank.conversations.service import TURN_LEASE
    from thinktank.store.tables import Thread

    world = await build([mock("slow", chunk_delay=60.0, rules=[rule(EXTRACT, '{"memories": []}')],
                              replies=["one two three four five six seven eight nine ten"])])
    thread = await world.conv.threads.create(ALICE, model="slow")

    async def lease() -> float | None:
        async with world.db.engine.connect() as conn:
            return (await conn.execute(select(Thread.busy_until).where(Thread.id == thread.id))).scalar_one()

    start = world.clock.time()
    t = await world.conv.send(ALICE, None, thread.id, "Talk slowly", TurnOptions(stream=True))
    assert await lease() == start + TURN_LEASE
    held: list[tuple[float, float | None]] = []
    async for event in t.events():
        if event.type == "delta" and not t.done.is_set():
            held.append((world.clock.time(), await lease()))
    live = [(now, until) for now, until in held if until is not None]  # (None: released, not yet done)
    assert len(live) >= 5 and all(until > now for now, until in live)
    assert any(now > start + TURN_LEASE for now, _ in live)  # renewed: the first lease has run out by then
    assert await lease() is None
    assert (await t.outcome())["message"]["content"] == "one two three four five six seven eight nine ten"


async def test_a_turn_can_be_followed_again_from_any_event_for_a_while(build: Build) -> None:
    from thinktank.conversations.service import TURN_KEPT

    world = await build(MODELS)
    thread = await world.conv.threads.create(ALICE, model="chat")
    t = await world.conv.send(ALICE, None, thread.id, "Hi", TurnOptions(stream=True))
    live = [e async for e in t.events()]
    assert [e.id for e in live] == list(range(1, len(live) + 1)) and live[-1].type == "message"
    again = await world.conv.follow(ALICE, thread.id)
    assert [e.id for e in [e async for e in again.events(3)]] == [e.id for e in live[3:]]
    with pytest.raises(NotFoundError):
        await world.conv.follow(BOB, thread.id)  # not his thread
    world.clock.advance(TURN_KEPT + 1)
    with pytest.raises(NotFoundError):
        await world.conv.follow(ALICE, thread.id)  # ended too long ago: the stored messages are the record
