"""Long threads: older turns fold into a rolling summary so prompts fit the model's context window, and
nothing said is lost from the record. Here the turn that needs a summary writes it (``summary_ahead: 0``, as
when the summary job is not done in time); written ahead by the job: ``test_summary_jobs``."""

from __future__ import annotations

import pytest

from thinktank.conversations import context as cx
from thinktank.conversations.exports import export_json
from thinktank.conversations.service import TurnOptions
from thinktank.errors import InvalidRequestError
from thinktank.store.tables import ThreadMessage
from thinktank.types import message_text

from .conftest import ALICE, EXTRACT, SUMMARISE, Build, World, mock, rule

FILLER = " It matters because of many reasons that I would like to explore with you at some length today."


def content(i: int) -> str:
    return f"Tell me about topic-{i:02d}.{FILLER}"


def config(summary_model: str | None = "summ") -> dict[str, object]:
    return {"conversations": {"reply_tokens": 40, "summary_tokens": 60, "summary_ahead": 0,
                              **({"summary_model": summary_model} if summary_model else {})},
            "memory": {"enabled": False}}


async def talk(world: World, thread_id: str, turns: range) -> None:
    for i in turns:
        t = await world.conv.send(ALICE, None, thread_id, content(i), TurnOptions())
        await t.outcome()


async def test_old_turns_fold_into_a_rolling_summary_and_stay_on_record(build: Build) -> None:
    world = await build([
        mock("chat", context_window=480),
        mock("summ", replies=["SUMMARY ONE: the user asked about early topics.", "SUMMARY TWO: more topics."]),
    ], **config())
    thread = await world.conv.threads.create(ALICE, model="chat")
    await talk(world, thread.id, range(1, 4))
    assert await world.conv.threads.latest_summary(thread.id) is None  # three turns still fit
    assert all("topic-01" in p for p in world.chats("chat"))
    await talk(world, thread.id, range(4, 6))
    first = await world.conv.threads.latest_summary(thread.id)
    assert first is not None and first.content.startswith("SUMMARY ONE") and first.model == "summ"
    assert first.prompt_tokens > 0 and first.completion_tokens > 0
    # the summary model was given the folded turns, word for word
    asked = "\n".join(message_text(m) for m in world.requests("summ")[0].messages)
    assert SUMMARISE in asked and "topic-01" in asked and "There is no summary yet" in asked
    # the turn after it: the summary stands in for the folded messages, the rest is verbatim
    prompt = world.chats("chat")[-1]
    folded = range(1, first.through_seq + 1)
    assert "SUMMARY ONE" in prompt and f"first {first.through_seq} messages" in prompt
    messages = await world.conv.threads.messages(ALICE, thread.id)
    for m in messages[: first.through_seq]:
        assert m.content not in prompt
    for m in messages[first.through_seq:-1]:  # the last is the reply to this prompt
        assert m.content in prompt
    assert len(folded) >= 2
    assert messages[-1].context == {"memory_ids": [], "summary_through": first.through_seq}
    # the prompt fits the window (estimated), with the reply's room kept
    request = world.requests("chat")[-1]
    assert sum(cx.message_tokens(message_text(m)) for m in request.messages) + cx.FRAME_TOKENS <= 480 - 40
    assert request.messages[0].role == "system" and request.messages[1].role == "user"
    # it rolls: the next summary starts from the one before
    await talk(world, thread.id, range(6, 10))
    second = await world.conv.threads.latest_summary(thread.id)
    assert second is not None and second.content.startswith("SUMMARY TWO") and second.through_seq > first.through_seq
    asked = "\n".join(message_text(m) for m in world.requests("summ")[1].messages)
    assert "<summary_so_far>\nSUMMARY ONE" in asked
    # nothing is lost: every message is stored and exported, and both summaries are on record
    messages = await world.conv.threads.messages(ALICE, thread.id)
    assert len(messages) == 18 and [m.seq for m in messages] == list(range(1, 19))
    summaries = await world.conv.threads.summaries_of(thread.id)
    exported = export_json(await world.conv.threads.get(ALICE, thread.id), None, messages, summaries, 0.0)
    assert [m["content"] for m in exported["messages"] if m["role"] == "user"] == [content(i) for i in range(1, 10)]
    assert [s["through_seq"] for s in exported["summaries"]] == [first.through_seq, second.through_seq]


async def test_the_threads_model_summarises_unless_one_is_configured(build: Build) -> None:
    world = await build([mock("chat", context_window=400, rules=[rule(SUMMARISE, "CHAT SUMMARY"),
                                                                 rule(EXTRACT, '{"memories": []}')])],
                        **config(summary_model=None))
    thread = await world.conv.threads.create(ALICE, model="chat")
    t = None
    for i in range(1, 6):
        t = await world.conv.send(ALICE, None, thread.id, content(i), TurnOptions(stream=True))
        events = [e.type async for e in t.events()]
        if "summary" in events:
            assert events[0] == "summary" and events[-1] == "message"
            break
    else:
        pytest.fail("no summary was made")
    summary = await world.conv.threads.latest_summary(thread.id)
    assert summary is not None and summary.content == "CHAT SUMMARY" and summary.model == "chat"
    assert "CHAT SUMMARY" in world.chats("chat")[-1]


async def test_a_message_too_long_for_the_window_is_a_400(build: Build) -> None:
    world = await build([mock("chat", context_window=600), mock("summ")], **config())
    thread = await world.conv.threads.create(ALICE, model="chat")
    t = await world.conv.send(ALICE, None, thread.id, "word " * 600, TurnOptions())
    with pytest.raises(InvalidRequestError, match="tokens") as caught:
        await t.outcome()
    assert caught.value.code == "context_length_exceeded"
    assert await world.conv.threads.messages(ALICE, thread.id) == []


def _msg(seq: int, text: str, role: str = "user") -> ThreadMessage:
    return ThreadMessage(id=f"m{seq}", thread_id="t", seq=seq, role=role, content=text, created_at=0.0)


def test_fold_count_keeps_the_recent_half_in_whole_turns() -> None:
    history = [_msg(i, "x" * 96, "user" if i % 2 else "assistant") for i in range(1, 9)]  # 28 tokens each
    assert cx.fold_count(history, 28 * 8) == 0
    n = cx.fold_count(history, 28 * 7)
    assert n == 6 and 28 * (8 - n) <= 28 * 7 // 2 and history[n].role == "user"
    assert cx.fold_count(history, 10) == 8


def test_summary_batches_fit_the_summary_models_window() -> None:
    folded = [_msg(i, f"message {i} " + "y" * 400, "user" if i % 2 else "assistant") for i in range(1, 21)]
    batches = cx.summary_batches(folded, window=1000, summary_tokens=100)
    assert len(batches) > 1 and batches[-1][1] == 20
    assert [b[1] for b in batches] == sorted(b[1] for b in batches)
    joined = "\n".join(text for text, _ in batches)
    assert all(f"message {i} " in joined for i in range(1, 21))
    for text, _ in batches:
        prompt = cx.summary_prompt("a prior summary " * 20, text, 100)
        assert sum(cx.message_tokens(message_text(m)) for m in prompt) + 100 <= 1000
    huge = cx.summary_batches([_msg(1, "z" * 20_000)], window=1000, summary_tokens=100)
    assert len(huge) == 1 and "[…]" in huge[0][0] and len(huge[0][0]) < 4000
