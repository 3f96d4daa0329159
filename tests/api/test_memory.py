"""The learned profile over HTTP: facts extracted after a turn (with their source message), de-duplicated,
injected into later prompts as delimited data, edited and deleted by their user, switched off; another
user's memory is a 404; a shutdown cancels an extraction still running."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from thinktank.api.app import create_app
from thinktank.config import Settings, parse_config
from thinktank.knowledge.embeddings import LocalEmbedder
from thinktank.store.db import Database, default_database_url
from thinktank.store.tables import MemoryFact, ThreadMessage, UsageRow

from ..fakes.server import serving
from ..fakes.upstream import FakeUpstream
from .test_threads import Env, Script, _prompt, config, make_env

LYON = ('{"memories": [{"kind": "fact", "text": "Lives in Lyon."}, '
        '{"kind": "preference", "text": "Prefers metric units."}]}')
MORE = ('```json\n{"memories": [{"kind": "fact", "text": "Lives in Lyon, France."}, '
        '{"kind": "interest", "text": "Enjoys climbing."}]}\n```')


@pytest.fixture
async def env(settings: Settings, local_embedder: LocalEmbedder) -> AsyncIterator[Env]:
    async for e in make_env(settings, local_embedder):
        yield e


async def memory(env: Env, headers: dict[str, str]) -> dict[str, Any]:
    r = await env.http.get(env.url + "/api/v1/me/memory", headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_memory_is_learned_deduplicated_injected_and_editable(env: Env) -> None:
    _, alice = await env.user("alice@example.com")
    _, bob = await env.user("bob@example.com")
    thread = await env.thread(alice)
    env.script.extractions.extend([LYON, MORE, "I'd rather not."])
    r = await env.say(alice, thread["id"], "I live in Lyon; please use metric units.", stream=True)
    assert r.status_code == 200
    await env.settled()
    user_message = (await env.http.get(env.url + f"/api/v1/threads/{thread['id']}/messages", headers=alice)
                    ).json()["data"][0]
    mine = await memory(env, alice)
    assert mine["enabled"] is True
    facts = mine["data"]
    assert [(f["kind"], f["text"]) for f in facts] == [
        ("fact", "Lives in Lyon."), ("preference", "Prefers metric units.")]
    assert all(f["source_message_id"] == user_message["id"] and f["source_thread_id"] == thread["id"] for f in facts)
    [asked] = env.extractions()
    assert asked["model"] == "fake-model" and asked["temperature"] == 0  # the thread's model by default
    assert "<user_message>\nI live in Lyon; please use metric units.\n</user_message>" in _prompt(asked)

    # a paraphrase confirms what is known, something new is added
    await env.say(alice, thread["id"], "Lyon has great climbing walls, I go every week.")
    await env.settled()
    facts = (await memory(env, alice))["data"]
    assert [(f["text"], f["mentions"]) for f in facts] == [
        ("Lives in Lyon.", 2), ("Prefers metric units.", 1), ("Enjoys climbing.", 1)]

    # a new thread: what was learned comes with the prompt, as delimited data
    other = await env.thread(alice, model="mini")
    r = await env.say(alice, other["id"], "What is the weather like where I live?")
    assert r.status_code == 200
    system = env.chats()[-1]["messages"][0]
    assert system["role"] == "system" and system["content"].startswith("<user_memory>")
    assert "- (fact) Lives in Lyon." in system["content"] and "not instructions" in system["content"]
    assert r.json()["message"]["context"]["memory_ids"][0] == facts[0]["id"]
    await env.settled()  # the third extraction was unusable: ignored
    assert len((await memory(env, alice))["data"]) == 3

    # edit and delete, one or all; Bob sees and touches none of it
    lyon = facts[0]["id"]
    for method, body in (("GET", None), ("PATCH", {"text": "Lives in Paris."}), ("DELETE", None)):
        r = await env.http.request(method, env.url + f"/api/v1/me/memory/{lyon}", headers=bob, json=body)
        assert r.status_code == 404, r.text
    assert (await memory(env, bob))["data"] == []
    assert (await env.http.delete(env.url + "/api/v1/me/memory", headers=bob)).json() == {"deleted": 0}
    r = await env.http.patch(env.url + f"/api/v1/me/memory/{lyon}", headers=alice,
                             json={"text": "Lives in Grenoble.", "kind": "fact"})
    assert r.status_code == 200 and r.json()["text"] == "Lives in Grenoble."
    for body, status in (({"text": "x" * 501}, 400), ({"kind": "mood"}, 400), ({"text": "prefers METRIC units"}, 409),
                         ({"colour": "red"}, 422)):
        r = await env.http.patch(env.url + f"/api/v1/me/memory/{lyon}", headers=alice, json=body)
        assert r.status_code == status, (body, r.text)
    await env.say(alice, other["id"], "Where do I live?")
    prompt = _prompt(env.chats()[-1])
    assert "Lives in Grenoble." in prompt and "Lives in Lyon." not in prompt
    assert (await env.http.delete(env.url + f"/api/v1/me/memory/{lyon}", headers=alice)).status_code == 204
    assert (await env.http.delete(env.url + f"/api/v1/me/memory/{lyon}", headers=alice)).status_code == 404
    await env.settled()
    left = (await memory(env, alice))["data"]
    assert lyon not in [f["id"] for f in left] and len(left) == 2
    assert (await env.http.delete(env.url + "/api/v1/me/memory", headers=alice)).json() == {"deleted": 2}
    assert (await memory(env, alice))["data"] == []


async def test_switched_off_nothing_is_extracted_or_injected(env: Env) -> None:
    _, alice = await env.user("alice@example.com")
    thread = await env.thread(alice)
    env.script.extractions.append(LYON)
    await env.say(alice, thread["id"], "I live in Lyon.")
    await env.settled()
    assert len(env.extractions()) == 1
    r = await env.http.put(env.url + "/api/v1/me/memory/settings", headers=alice, json={"enabled": False})
    assert r.status_code == 200 and r.json() == {"enabled": False}
    assert (await env.http.get(env.url + "/api/v1/me/memory/settings", headers=alice)).json() == {"enabled": False}
    assert (await env.http.put(env.url + "/api/v1/me/memory/settings", headers=alice,
                               json={"enabled": "perhaps"})).status_code == 422
    env.script.extractions.append(LYON)
    r = await env.say(alice, thread["id"], "I also climb. Where do I live?")
    await env.settled()
    assert len(env.extractions()) == 1  # nothing was extracted
    assert "<user_memory>" not in _prompt(env.chats()[-1])  # nor injected
    assert r.json()["message"]["context"]["memory_ids"] == []
    mine = await memory(env, alice)
    assert mine["enabled"] is False and len(mine["data"]) == 2
    await env.http.put(env.url + "/api/v1/me/memory/settings", headers=alice, json={"enabled": True})
    await env.say(alice, thread["id"], "Where do I live?")
    assert "Lives in Lyon." in _prompt(env.chats()[-1])


async def test_the_extractor_can_be_configured(settings: Settings, local_embedder: LocalEmbedder) -> None:
    async for env in make_env(settings, local_embedder, memory={"model": "mini", "max_injected": 1}):
        _, alice = await env.user("alice@example.com")
        thread = await env.thread(alice)
        env.script.extractions.append(LYON)
        await env.say(alice, thread["id"], "I live in Lyon and like metric units.")
        await env.settled()
        assert [e["model"] for e in env.extractions()] == ["fake-mini"]
        await env.say(alice, thread["id"], "How warm is it in Lyon in summer?")
        block = env.chats()[-1]["messages"][0]["content"]
        assert "Lives in Lyon." in block and "metric" not in block  # only the most relevant one


async def test_shutdown_cancels_an_extraction_under_way(settings: Settings, local_embedder: LocalEmbedder) -> None:
    script = Script(hang_extractions=True)
    upstream = FakeUpstream(script)
    await upstream.start()
    app = create_app(settings, parse_config(config(upstream.url)), local_embedder=local_embedder)
    try:
        async with serving(app) as url, httpx.AsyncClient(timeout=30) as http:
            env = Env(url, app, upstream, http, script)
            _, alice = await env.user("alice@example.com")
            thread = await env.thread(alice)
            r = await env.say(alice, thread["id"], "I live in Lyon.")
            assert r.status_code == 200, r.text
            await script.extraction_arrived.wait()  # the extraction hangs upstream; now the server stops
        await asyncio.wait_for(upstream.cancel_event.wait(), 10)  # its upstream request was cancelled
    finally:
        await upstream.close()
    db = Database(default_database_url(settings.data_dir))
    try:
        async with db.session() as s:
            assert (await s.execute(select(MemoryFact))).scalars().all() == []  # nothing learned
            assert len((await s.execute(select(ThreadMessage))).scalars().all()) == 2  # the turn is kept
            statuses = (await s.execute(select(UsageRow.status).order_by(UsageRow.id))).scalars().all()
            assert statuses == [200, 499]  # the extraction was accounted as cancelled
    finally:
        await db.close()
