"""Threads over HTTP: thinktank on loopback, a fake OpenAI upstream that records every prompt and answers
by script, SQLite, the real local embedder. Streaming and stored turns with tokens and cost, rolling
summaries, personas (inline and from a document), export and import, and 404s across users."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from thinktank.api.app import create_app
from thinktank.config import Settings, parse_config
from thinktank.knowledge.embeddings import LocalEmbedder
from thinktank.knowledge.ingest import Source

from ..fakes import openai as fmt
from ..fakes.server import serving
from ..fakes.upstream import FakeUpstream, Recorded, Reply
from ..fakes.upstream import sse as sse_events
from .apps import AppEnv, served
from .conftest import AUTH

CANARY = "sk-canary-provider-key-THREADS"
PRICE = (1000.0, 2000.0)
"""USD per million input and output tokens of every model here."""
EXTRACT = "short profile of a user"
SUMMARISE = "running summary of a long conversation"


def _prompt(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content")) for m in body.get("messages", []))


@dataclass
class Script:
    """The upstream's answers: memory extractions and summaries by their prompt, chat replies in order
    (else an echo of the last message)."""

    replies: deque[str] = field(default_factory=deque)
    extractions: deque[str] = field(default_factory=deque)
    summaries: int = 0
    hang_extractions: bool = False
    """Extractions get no answer (until the client gives up)."""
    extraction_arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, rec: Recorded) -> Reply:
        body = rec.json if isinstance(rec.json, dict) else {}
        if not rec.path.endswith("/chat/completions"):
            return fmt.default_handler(rec)
        prompt = _prompt(body)
        if EXTRACT in prompt:
            self.extraction_arrived.set()
            if self.hang_extractions:
                return Reply(hang=True)
            text = self.extractions.popleft() if self.extractions else '{"memories": []}'
        elif SUMMARISE in prompt:
            self.summaries += 1
            text = f"ROLLING SUMMARY {self.summaries}: the user has been asking about topics."
        else:
            text = self.replies.popleft() if self.replies else f"echo: {body['messages'][-1]['content']}"
        if body.get("stream"):
            words = text.split(" ")
            return Reply(sse=fmt.stream_events([w if i == 0 else " " + w for i, w in enumerate(words)]))
        return Reply(json=fmt.completion(text, model=str(body.get("model"))))


def config(url: str, **extra: Any) -> dict[str, Any]:
    base = {"provider": "openai", "base_url": url + "/v1", "api_key": CANARY, "input_price": PRICE[0],
            "output_price": PRICE[1]}
    return {
        "models": [
            {"name": "gpt", "model": "fake-model", **base},
            {"name": "mini", "model": "fake-mini", **base},
            {"name": "small", "model": "fake-small", "context_window": 480, **base},
        ],
        "router": {"num_retries": 0},
        **extra,
    }


@dataclass
class Env(AppEnv):
    script: Script

    async def thread(self, headers: dict[str, str], **body: Any) -> dict[str, Any]:
        r = await self.http.post(self.url + "/api/v1/threads", headers=headers, json={"model": "gpt", **body})
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def say(self, headers: dict[str, str], thread_id: str, content: str, **body: Any) -> httpx.Response:
        return await self.http.post(self.url + f"/api/v1/threads/{thread_id}/messages", headers=headers,
                                    json={"content": content, **body})

    def chats(self) -> list[dict[str, Any]]:
        """The turns' requests the upstream received (not memory extractions or summaries)."""
        return [r.json for r in self.upstream.requests if r.path.endswith("/chat/completions")
                and EXTRACT not in _prompt(r.json) and SUMMARISE not in _prompt(r.json)]

    def extractions(self) -> list[dict[str, Any]]:
        return [r.json for r in self.upstream.requests if r.path.endswith("/chat/completions")
                and EXTRACT in _prompt(r.json)]

    async def settled(self) -> None:
        """Wait for the background work of every turn so far (memory extraction)."""
        await self.app.state.conversations.drain()

    def slow_reply(self) -> asyncio.Event:
        """The next reply streams "Slow", then " and steady." only once the returned gate is set."""
        gate = asyncio.Event()
        self.upstream.queue(Reply(sse=sse_events(fmt.chunk({"role": "assistant", "content": "Slow"}),
                                                 fmt.chunk({"content": " and"}), fmt.chunk({"content": " steady."}),
                                                 fmt.chunk({}, "stop")), gate=gate))
        return gate


async def make_env(settings: Settings, local_embedder: LocalEmbedder, **extra: Any) -> AsyncIterator[Env]:
    script = Script()
    async with served(settings, local_embedder, script, lambda url: config(url, **extra)) as (url, app, upstream,
                                                                                             http):
        yield Env(url, app, upstream, http, script)


@pytest.fixture
async def env(settings: Settings, local_embedder: LocalEmbedder) -> AsyncIterator[Env]:
    async for e in make_env(settings, local_embedder):
        yield e


@pytest.fixture
async def env_db(settings: Settings, local_embedder: LocalEmbedder, db_url: str) -> AsyncIterator[Env]:
    """The same, on SQLite and then on PostgreSQL."""
    async for e in make_env(settings.model_copy(update={"database_url": db_url}), local_embedder):
        yield e


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.split("\n\n"):
        if not block:
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = orjson.loads(lines["data"])
        assert data["type"] == lines["event"]
        out.append((lines["event"], data))
    return out


def cost(prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * PRICE[0] + completion_tokens * PRICE[1]) / 1e6


async def test_thread_lifecycle(env_db: Env) -> None:
    env = env_db
    _, alice = await env.user("alice@example.com")
    created = await env.thread(alice, title="Plans", knowledge_bases=[])
    assert created["title"] == "Plans" and created["model"] == "gpt" and created["archived"] is False
    assert created["id"].startswith("thr_") and created["message_count"] == 0
    other = await env.thread(alice)
    base = env.url + "/api/v1/threads"
    listed = (await env.http.get(base, headers=alice)).json()["data"]
    assert {t["id"] for t in listed} == {created["id"], other["id"]}
    r = await env.http.patch(f"{base}/{created['id']}", headers=alice,
                             json={"title": "Holiday plans", "archived": True})
    assert r.status_code == 200 and r.json()["title"] == "Holiday plans" and r.json()["archived"] is True
    assert [t["id"] for t in (await env.http.get(base, headers=alice)).json()["data"]] == [other["id"]]
    archived = (await env.http.get(base + "?archived=true", headers=alice)).json()["data"]
    assert [t["id"] for t in archived] == [created["id"]]
    assert len((await env.http.get(base + "?archived=all", headers=alice)).json()["data"]) == 2
    r = await env.http.patch(f"{base}/{created['id']}", headers=alice, json={"archived": False, "model": "mini"})
    assert r.json()["archived"] is False and r.json()["model"] == "mini"
    got = (await env.http.get(f"{base}/{created['id']}", headers=alice)).json()
    assert got["title"] == "Holiday plans" and got["summary"] is None and got["message_count"] == 0
    assert (await env.http.delete(f"{base}/{created['id']}", headers=alice)).status_code == 204
    assert (await env.http.get(f"{base}/{created['id']}", headers=alice)).status_code == 404
    assert (await env.http.delete(f"{base}/{created['id']}", headers=alice)).status_code == 404


async def test_a_streamed_reply_is_stored_with_tokens_and_cost(env_db: Env) -> None:
    env = env_db
    _, alice = await env.user("alice@example.com")
    thread = await env.thread(alice)
    env.script.replies.extend(["Paris is the capital of France.", "About two million people."])
    r = await env.say(alice, thread["id"], "What is the capital of France?", stream=True)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert [t for t, _ in events[:-1]] == ["delta"] * 6 and events[-1][0] == "message"
    assert "".join(d["content"] for t, d in events if t == "delta") == "Paris is the capital of France."
    final = events[-1][1]
    reply, user = final["message"], final["user_message"]
    assert reply["id"].startswith("msg_") and reply["role"] == "assistant" and reply["seq"] == 2
    assert reply["content"] == "Paris is the capital of France." and reply["model"] == "gpt"
    # the upstream's own usage: 12 prompt tokens and one completion token per streamed word (6)
    assert reply["usage"] == {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}
    assert reply["cost_usd"] == pytest.approx(cost(12, 6)) and reply["citations"] == []
    assert user["content"] == "What is the capital of France?" and user["seq"] == 1
    [sent] = env.chats()
    assert sent["model"] == "fake-model" and sent["stream"] is True
    assert sent["messages"] == [{"role": "user", "content": "What is the capital of France?"}]
    assert CANARY not in orjson.dumps(sent).decode()

    # without stream: the stored turn as JSON
    r = await env.say(alice, thread["id"], "And its population?", max_tokens=50, temperature=0.3)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["message"]["content"] == "About two million people." and body["message"]["seq"] == 4
    assert body["message"]["usage"] == {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}
    assert body["turn_cost_usd"] == pytest.approx(cost(12, 8))
    sent = env.chats()[-1]
    assert sent["max_tokens"] == 50 and sent["temperature"] == 0.3
    assert [m["content"] for m in sent["messages"]] == [
        "What is the capital of France?", "Paris is the capital of France.", "And its population?"]

    stored = (await env.http.get(env.url + f"/api/v1/threads/{thread['id']}/messages", headers=alice)).json()["data"]
    assert [m["id"] for m in stored] == [user["id"], reply["id"], body["user_message"]["id"], body["message"]["id"]]
    assert stored[1] == reply
    got = (await env.http.get(env.url + f"/api/v1/threads/{thread['id']}", headers=alice)).json()
    assert got["message_count"] == 4 and got["cost_usd"] == pytest.approx(cost(12, 6) + cost(12, 8))
    assert got["title"] == "What is the capital of France?"
    # accounted like any request: usage by model, with the cost
    await env.settled()  # two memory extractions (non-streamed: 12 + 8 tokens each)
    [row] = (await env.http.get(env.url + "/api/v1/usage", headers=alice)).json()["data"]
    assert row["group"] == "gpt" and row["requests"] == 4
    assert row["cost_usd"] == pytest.approx(cost(12, 6) + cost(12, 8) + 2 * cost(12, 8))


async def test_long_threads_are_summarised_within_the_context_window(
    settings: Settings, local_embedder: LocalEmbedder,
) -> None:
    # (written by the turn that needs it: the summary job, which writes it ahead, is off)
    async for env in make_env(settings, local_embedder, conversations={"reply_tokens": 40, "summary_tokens": 60,
                                                                       "summary_model": "mini", "summary_ahead": 0}):
        _, alice = await env.user("alice@example.com")
        thread = await env.thread(alice, model="small")
        said = [f"Tell me about topic-{i:02d}. It matters for reasons I would like to explore with you today."
                for i in range(1, 8)]
        summary_events = []
        for text in said:
            r = await env.say(alice, thread["id"], text, stream=True)
            assert r.status_code == 200, r.text
            summary_events += [d for t, d in sse(r.text) if t == "summary"]
        assert summary_events, "no summary was made"
        through = summary_events[-1]["summary"]["through_seq"]
        last = env.chats()[-1]
        prompt = _prompt(last)
        assert last["messages"][0]["role"] == "system" and "ROLLING SUMMARY" in prompt
        assert f"first {through} messages" in prompt
        folded = [s for s in said if said.index(s) < through // 2]
        assert folded and not any(s in prompt for s in folded)
        assert said[-1] in prompt and said[-2] in prompt
        summary_calls = [r.json for r in env.upstream.requests if SUMMARISE in _prompt(r.json)]
        assert {c["model"] for c in summary_calls} == {"fake-mini"} and said[0] in _prompt(summary_calls[0])
        # nothing is lost: the export holds every message and the summaries
        export = (await env.http.get(env.url + f"/api/v1/threads/{thread['id']}/export", headers=alice)).json()
        assert [m["content"] for m in export["messages"] if m["role"] == "user"] == said
        assert len(export["messages"]) == 14 and export["summaries"][-1]["through_seq"] == through
        got = (await env.http.get(env.url + f"/api/v1/threads/{thread['id']}", headers=alice)).json()
        assert got["summary"]["through_seq"] == through and got["summary"]["content"].startswith("ROLLING SUMMARY")


async def test_personas_inline_and_from_a_document(env: Env) -> None:
    alice_p, alice = await env.user("alice@example.com")
    _, bob = await env.user("bob@example.com")
    r = await env.http.post(env.url + "/api/v1/personas", headers=alice,
                            json={"name": "Pirate", "system_prompt": "You talk like a pirate."})
    assert r.status_code == 201, r.text
    pirate = r.json()
    assert pirate["source"] == "inline" and pirate["system_prompt"] == "You talk like a pirate."
    thread = await env.thread(alice, persona_id=pirate["id"])
    assert (await env.say(alice, thread["id"], "Hello")).status_code == 200
    assert env.chats()[-1]["messages"][0] == {"role": "system", "content": "You talk like a pirate."}

    # a digital twin: the persona is a profile in a knowledge base
    kb = (await env.app.state.knowledge.create(alice_p, "people")).kb
    [doc] = await env.app.state.knowledge.add(alice_p, kb.id, [Source(
        "grace.md", b"# Grace Hopper\n\nGrace was a computer scientist and a rear admiral. She made COBOL possible.")])
    r = await env.http.post(env.url + "/api/v1/personas", headers=alice,
                            json={"name": "Grace", "knowledge_base": "people", "document_id": doc.document_id})
    assert r.status_code == 201, r.text
    grace = r.json()
    assert grace["source"] == "document" and grace["knowledge_base"] == kb.id
    r = await env.http.patch(env.url + f"/api/v1/threads/{thread['id']}", headers=alice,
                             json={"persona_id": grace["id"]})
    assert r.status_code == 200 and r.json()["persona_id"] == grace["id"]
    assert (await env.say(alice, thread["id"], "Who are you?")).status_code == 200
    system = env.chats()[-1]["messages"][0]["content"]
    assert "<persona_profile" in system and "She made COBOL possible." in system and "pirate" not in system
    listed = (await env.http.get(env.url + "/api/v1/personas", headers=alice)).json()["data"]
    assert [p["name"] for p in listed] == ["Grace", "Pirate"]

    # another user's persona or document does not exist for Bob
    for method, path, body in (("GET", f"/api/v1/personas/{grace['id']}", None),
                               ("PATCH", f"/api/v1/personas/{grace['id']}", {"name": "x"}),
                               ("DELETE", f"/api/v1/personas/{grace['id']}", None),
                               ("POST", "/api/v1/threads", {"model": "gpt", "persona_id": grace["id"]}),
                               ("POST", "/api/v1/personas", {"name": "G", "knowledge_base": kb.id,
                                                             "document_id": doc.document_id})):
        r = await env.http.request(method, env.url + path, headers=bob, json=body)
        assert r.status_code == 404, (method, path, r.text)
    assert (await env.http.get(env.url + "/api/v1/personas", headers=bob)).json()["data"] == []
    # bad input
    for body in ({"name": "X"}, {"name": "", "system_prompt": "x"}, {"name": "X", "system_prompt": "x",
                                                                    "document_id": "d", "knowledge_base": "k"}):
        assert (await env.http.post(env.url + "/api/v1/personas", headers=alice, json=body)).status_code == 400
    r = await env.http.post(env.url + "/api/v1/personas", headers=alice, json={"name": "Pirate", "system_prompt": "y"})
    assert r.status_code == 409
    assert (await env.http.delete(env.url + f"/api/v1/personas/{pirate['id']}", headers=alice)).status_code == 204


async def test_grounded_thread_stores_its_citations(env: Env) -> None:
    alice_p, alice = await env.user("alice@example.com")
    kb = (await env.app.state.knowledge.create(alice_p, "support")).kb
    await env.app.state.knowledge.add(alice_p, kb.id, [
        Source("refunds.md", b"# Refunds\n\nRefunds are paid back within 14 days of the return."),
        Source("shipping.md", b"# Shipping\n\nShipping is free for orders over 50 euros.")])
    thread = await env.thread(alice, knowledge_bases=["support"])
    assert thread["knowledge_bases"] == [kb.id]
    env.script.replies.append("Refunds take 14 days [1].")
    r = await env.say(alice, thread["id"], "How long do refunds take?", stream=True)
    final = sse(r.text)[-1][1]["message"]
    assert [(c["index"], c["source"]) for c in final["citations"]] == [(1, "refunds.md")]
    assert {c["source"] for c in final["context"]["retrieved"]} == {"refunds.md", "shipping.md"}
    assert "Refunds are paid back within 14 days" in _prompt(env.chats()[-1])
    _, bob = await env.user("bob@example.com")
    r = await env.http.post(env.url + "/api/v1/threads", headers=bob, json={"model": "gpt", "knowledge_bases": [kb.id]})
    assert r.status_code == 404


async def test_export_import_and_markdown(env_db: Env) -> None:
    env = env_db
    _, alice = await env.user("alice@example.com")
    _, bob = await env.user("bob@example.com")
    thread = await env.thread(alice, title="Recipes")
    env.script.replies.extend(["Use **butter**.", "Bake at 180 °C."])
    await env.say(alice, thread["id"], "How do I make a crust?")
    await env.say(alice, thread["id"], "And the oven?", stream=True)
    url = env.url + f"/api/v1/threads/{thread['id']}/export"
    r = await env.http.get(url, headers=alice)
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    exported = r.json()
    assert exported["format"] == "thinktank.thread" and len(exported["messages"]) == 4

    r = await env.http.post(env.url + "/api/v1/threads/import", headers=alice, json=exported)
    assert r.status_code == 201, r.text
    copy = r.json()["thread"]
    assert copy["id"] != thread["id"] and r.json()["warnings"] == []
    again = (await env.http.get(env.url + f"/api/v1/threads/{copy['id']}/export", headers=alice)).json()

    def same(e: dict[str, Any]) -> dict[str, Any]:
        return {"thread": {k: v for k, v in e["thread"].items() if k != "id"},
                "messages": [{k: v for k, v in m.items() if k not in ("id", "thread_id")} for m in e["messages"]],
                "summaries": [{k: v for k, v in s.items() if k != "id"} for s in e["summaries"]]}

    assert same(again) == same(exported)

    r = await env.http.get(url + "?format=markdown", headers=alice)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/markdown")
    md = r.text
    assert md.startswith("# Recipes\n") and "Use **butter**." in md and "And the oven?" in md
    assert md.count("### User") == 2 and md.count("### Assistant") == 2 and "`gpt`" in md
    assert (await env.http.get(url + "?format=pdf", headers=alice)).status_code == 400

    # malformed imports write nothing
    count = len((await env.http.get(env.url + "/api/v1/threads?archived=all", headers=alice)).json()["data"])
    broken = [
        (b"{not json", {"content-type": "application/json"}),
        (orjson.dumps({**exported, "messages": [{"role": "robot", "content": "x"}]}), {}),
        (orjson.dumps({**exported, "thread": {**exported["thread"], "model": "nope"}}), {}),
        (orjson.dumps({**exported, "thread": {**exported["thread"], "title": "x" * 201}}), {}),
        (orjson.dumps({**exported, "summaries": [{"through_seq": 99, "content": "x"}]}), {}),
        (orjson.dumps({**exported, "format": "other"}), {}),
    ]
    for raw, extra in broken:
        r = await env.http.post(env.url + "/api/v1/threads/import", content=raw,
                                headers={**alice, "content-type": "application/json", **extra})
        assert r.status_code in (400, 404, 422), r.text
        assert r.json()["error"]["message"]
    after = (await env.http.get(env.url + "/api/v1/threads?archived=all", headers=alice)).json()["data"]
    assert len(after) == count
    # Bob may import what Alice gave him; he may not export her thread
    assert (await env.http.get(url, headers=bob)).status_code == 404
    r = await env.http.post(env.url + "/api/v1/threads/import", headers=bob, json=exported)
    assert r.status_code == 201
    assert len((await env.http.get(env.url + "/api/v1/threads", headers=bob)).json()["data"]) == 1


async def test_another_users_thread_is_a_404_everywhere(env: Env) -> None:
    _, alice = await env.user("alice@example.com")
    _, bob = await env.user("bob@example.com")
    thread = await env.thread(alice)
    await env.say(alice, thread["id"], "secret plans")
    base = f"/api/v1/threads/{thread['id']}"
    for method, path, body in (("GET", base, None), ("PATCH", base, {"title": "mine"}), ("DELETE", base, None),
                               ("GET", base + "/messages", None), ("POST", base + "/messages", {"content": "hi"}),
                               ("POST", base + "/messages", {"content": "hi", "stream": True}),
                               ("GET", base + "/export", None), ("GET", base + "/export?format=markdown", None)):
        for who in (bob, AUTH):  # the admin key acts for the system user: no special access either
            r = await env.http.request(method, env.url + path, headers=who, json=body)
            assert r.status_code == 404, (method, path, r.text)
            assert "secret" not in r.text
    assert (await env.http.get(env.url + "/api/v1/threads", headers=bob)).json()["data"] == []
    msgs = (await env.http.get(env.url + base + "/messages", headers=alice)).json()["data"]
    assert len(msgs) == 2 and len(env.chats()) == 1


async def test_bad_input(env: Env) -> None:
    _, alice = await env.user("alice@example.com")
    base = env.url + "/api/v1/threads"
    cases = [
        ("POST", base, {"model": "nope"}, 404),
        ("POST", base, {"model": "gpt", "title": "x" * 201}, 400),
        ("POST", base, {"model": "gpt", "knowledge_bases": ["nope"]}, 404),
        ("POST", base, {"model": "gpt", "persona_id": "per_nope"}, 404),
        ("POST", base, {"model": "gpt", "colour": "red"}, 422),
        ("POST", base, {}, 422),
        ("GET", base + "?archived=maybe", None, 400),
    ]
    for method, url, body, status in cases:
        r = await env.http.request(method, url, headers=alice, json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["message"]
    thread = await env.thread(alice)
    t = f"{base}/{thread['id']}"
    for method, url, body, status in [
        ("POST", t + "/messages", {"content": ""}, 400),
        ("POST", t + "/messages", {"content": "  \n "}, 400),
        ("POST", t + "/messages", {"content": "hi", "stream": True, "model": "nope"}, 404),
        ("POST", t + "/messages", {"content": "hi", "model": "nope"}, 404),
        ("POST", t + "/messages", {}, 422),
        ("POST", t + "/messages", {"content": "hi", "max_tokens": 0}, 422),
        ("PATCH", t, {"title": "y" * 500}, 400),
        ("PATCH", t, {"model": "nope"}, 404),
        ("GET", t + "/export?format=docx", None, 400),
    ]:
        r = await env.http.request(method, url, headers=alice, json=body)
        assert r.status_code == status, (url, body, r.text)
        assert r.json()["error"]["message"]
    assert (await env.http.get(t + "/messages", headers=alice)).json()["data"] == []
    assert env.chats() == []
    # a key limited to other models cannot use the thread's model
    r = await env.http.post(env.url + "/api/v1/keys", headers=alice, json={"name": "k", "models": ["mini"]})
    key = {"Authorization": f"Bearer {r.json()['key']}"}
    assert (await env.say(key, thread["id"], "hi")).status_code == 404
    assert (await env.say(key, thread["id"], "hi", model="mini")).status_code == 200


async def test_one_turn_at_a_time_and_a_turn_outlives_its_client(env: Env) -> None:
    _, alice = await env.user("alice@example.com")
    thread = await env.thread(alice)
    gate = env.slow_reply()
    url = env.url + f"/api/v1/threads/{thread['id']}/messages"
    async with env.http.stream("POST", url, headers=alice, json={"content": "Take your time", "stream": True}) as r:
        assert r.status_code == 200
        lines = r.aiter_lines()
        assert [await anext(lines), await anext(lines)] == ["id: 1", "event: delta"]
        busy = await env.say(alice, thread["id"], "Are you there?")
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "thread_busy"
    # the client is gone; the reply goes on and is stored whole
    gate.set()
    await env.settled()
    stored = (await env.http.get(url, headers=alice)).json()["data"]
    assert [m["content"] for m in stored] == ["Take your time", "Slow and steady."]
    assert (await env.say(alice, thread["id"], "Thanks")).status_code == 200


async def test_a_broken_stream_resumes_after_its_last_event(env: Env) -> None:
    """A client whose stream broke follows the turn again from the event after ``Last-Event-ID``: the
    rest of the reply, each piece once, then the stored message; only the thread's owner may."""
    _, alice = await env.user("alice@example.com")
    _, bob = await env.user("bob@example.com")
    thread = await env.thread(alice)
    events_url = env.url + f"/api/v1/threads/{thread['id']}/turn/events"
    assert (await env.http.get(events_url, headers=alice)).status_code == 404  # no turn yet
    gate = env.slow_reply()
    url = env.url + f"/api/v1/threads/{thread['id']}/messages"
    async with env.http.stream("POST", url, headers=alice, json={"content": "Take your time", "stream": True}) as r:
        lines = r.aiter_lines()
        first = [await anext(lines) for _ in range(3)]
    assert first[:2] == ["id: 1", "event: delta"] and '"content":"Slow"' in first[2]
    gate.set()  # the client is gone; the reply goes on

    resumed = await env.http.get(events_url, headers={**alice, "Last-Event-ID": "1"})
    assert resumed.status_code == 200 and resumed.headers["content-type"].startswith("text/event-stream")
    events = sse(resumed.text)
    ids = [int(line.split(": ", 1)[1]) for line in resumed.text.splitlines() if line.startswith("id: ")]
    assert ids == list(range(2, len(events) + 2))  # each event once, in order, after the one it had
    assert [t for t, _ in events][-1] == "message"
    stored = events[-1][1]["message"]["content"]
    assert "Slow" + "".join(d["content"] for t, d in events if t == "delta") == stored == "Slow and steady."
    # from the start, by query; a bad Last-Event-ID; another user's thread
    again = sse((await env.http.get(events_url + "?after=0", headers=alice)).text)
    assert next(d.get("content") for t, d in again if t == "delta") == "Slow" and again[-1][0] == "message"
    bad = await env.http.get(events_url, headers={**alice, "Last-Event-ID": "two"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "Last-Event-ID"
    assert (await env.http.get(events_url, headers=bob)).status_code == 404


async def test_one_turn_at_a_time_across_processes_sharing_the_database(
    env_db: Env, settings: Settings, local_embedder: LocalEmbedder, db_url: str,
) -> None:
    """Two servers on one database (two workers): while one writes a reply in a thread, the other refuses
    a second turn up front (409, nothing sent upstream or spent), and takes turns again once it ends; a
    lease left by a process that died lapses (after ``TURN_LEASE`` seconds without progress)."""
    from sqlalchemy import update

    from thinktank.store.tables import Thread

    _, alice = await env_db.user("alice@example.com")
    thread = await env_db.thread(alice)
    path = f"/api/v1/threads/{thread['id']}/messages"
    gate = env_db.slow_reply()
    other = create_app(settings.model_copy(update={"database_url": db_url}), parse_config(config(env_db.upstream.url)),
                       local_embedder=local_embedder)
    async with serving(other) as other_url:
        async with env_db.http.stream("POST", env_db.url + path, headers=alice,
                                      json={"content": "Take your time", "stream": True}) as r:
            lines = r.aiter_lines()
            assert [await anext(lines), await anext(lines)] == ["id: 1", "event: delta"]
            busy = await env_db.http.post(other_url + path, headers=alice, json={"content": "Me too?"})
            assert busy.status_code == 409 and busy.json()["error"]["code"] == "thread_busy"
            assert len(env_db.chats()) == 1
            gate.set()
            async for _line in lines:
                pass
        await env_db.settled()
        again = await env_db.http.post(other_url + path, headers=alice, json={"content": "Thanks"})
        assert again.status_code == 200, again.text
        stored = (await env_db.http.get(env_db.url + path, headers=alice)).json()["data"]
        assert [m["content"] for m in stored] == ["Take your time", "Slow and steady.", "Thanks", "echo: Thanks"]

        # A process that died mid-turn left its lease: refused until it lapses, then taken.
        db = env_db.app.state.db
        for until, status in ((4e9, 409), (1.0, 200)):  # far in the future, long past
            async with db.session() as s:
                await s.execute(update(Thread).where(Thread.id == thread["id"]).values(busy_until=until))
            r = await env_db.http.post(other_url + path, headers=alice, json={"content": f"after {status}"})
            assert r.status_code == status, r.text
        await other.state.conversations.drain()


async def test_shutdown_cancels_a_turn_under_way_and_stores_nothing(
    settings: Settings, local_embedder: LocalEmbedder,
) -> None:
    from sqlalchemy import select

    from thinktank.store.db import Database, default_database_url
    from thinktank.store.tables import ThreadMessage, UsageRow

    script = Script()
    upstream = FakeUpstream(script)
    await upstream.start()
    app = create_app(settings, parse_config(config(upstream.url)), local_embedder=local_embedder)
    gate = asyncio.Event()  # never set: the reply stops after its first word
    try:
        async with serving(app) as url, httpx.AsyncClient(timeout=30) as http:
            env = Env(url, app, upstream, http, script)
            _, alice = await env.user("alice@example.com")
            thread = await env.thread(alice)
            upstream.queue(Reply(sse=sse_events(fmt.chunk({"role": "assistant", "content": "Half"}),
                                                fmt.chunk({"content": " done."})), gate=gate))
            url_ = env.url + f"/api/v1/threads/{thread['id']}/messages"
            async with http.stream("POST", url_, headers=alice, json={"content": "Hi", "stream": True}) as r:
                assert await anext(r.aiter_lines()) == "id: 1"
        # the server has stopped (its turn cancelled) and closed the upstream request
        await asyncio.wait_for(upstream.cancel_event.wait(), 10)
    finally:
        await upstream.close()
    db = Database(default_database_url(settings.data_dir))
    try:
        async with db.session() as s:
            assert (await s.execute(select(ThreadMessage))).scalars().all() == []  # a turn is stored whole or not
            assert (await s.execute(select(UsageRow.status))).scalars().all() == [499]
    finally:
        await db.close()


async def test_stop_cancels_the_upstream_call_and_keeps_the_reply_so_far(env: Env) -> None:
    """A user's Stop (unlike a client that merely goes away) cancels the upstream request; the turn is stored
    with the text streamed so far, finish_reason "stopped" and the tokens and cost of what was produced,
    and the thread takes turns again. Only the thread's owner may stop it."""
    _, alice = await env.user("alice@example.com")
    _, bob = await env.user("bob@example.com")
    thread = await env.thread(alice)
    stop_url = env.url + f"/api/v1/threads/{thread['id']}/turn/stop"
    assert (await env.http.post(stop_url, headers=alice)).json() == {"stopped": False}  # nothing under way
    env.slow_reply()  # the gate is never set: the upstream would wait forever
    url = env.url + f"/api/v1/threads/{thread['id']}/messages"
    async with env.http.stream("POST", url, headers=alice, json={"content": "Take your time", "stream": True}) as r:
        lines = r.aiter_lines()
        head = [await anext(lines) for _ in range(2)]
        assert head == ["id: 1", "event: delta"]
        assert (await env.http.post(stop_url, headers=bob)).status_code == 404
        assert (await env.http.post(stop_url, headers=alice)).json() == {"stopped": True}
        text = "\n".join(head + [line async for line in lines])
    await asyncio.wait_for(env.upstream.cancel_event.wait(), 10)
    assert env.upstream.cancelled == 1
    events = sse(text.strip() + "\n\n")
    assert [t for t, _ in events] == ["delta", "message"]
    assert [t for t, _ in events][-1] == "message"
    message = events[-1][1]["message"]
    assert (message["content"], message["finish_reason"]) == ("Slow", "stopped")
    assert message["usage"]["completion_tokens"] > 0 and message["cost_usd"] > 0
    stored = (await env.http.get(url, headers=alice)).json()["data"]
    assert [(m["content"], m["finish_reason"]) for m in stored] == [("Take your time", None), ("Slow", "stopped")]
    again = await env.say(alice, thread["id"], "Go on")
    assert again.status_code == 200 and again.json()["message"]["content"] == "echo: Go on"


async def test_edit_a_message_or_regenerate_the_last_answer(env: Env) -> None:
    """``replaces``: the turn takes the place of a user message and everything after it (the model sees only
    what came before); the thread's other messages stay."""
    _, alice = await env.user("alice@example.com")
    thread = await env.thread(alice)
    tid = thread["id"]
    env.script.replies.extend(["first answer", "second answer", "second again", "edited answer"])
    one = (await env.say(alice, tid, "one")).json()
    two = (await env.say(alice, tid, "two")).json()
    regen = await env.say(alice, tid, "two", replaces=two["user_message"]["id"])
    assert regen.status_code == 200, regen.text
    url = env.url + f"/api/v1/threads/{tid}/messages"
    stored = (await env.http.get(url, headers=alice)).json()["data"]
    assert [(m["seq"], m["content"]) for m in stored] == [(1, "one"), (2, "first answer"), (3, "two"),
                                                          (4, "second again")]
    assert "second answer" not in _prompt(env.chats()[-1])
    assert [m["content"] for m in env.chats()[-1]["messages"]][-1] == "two"
    edit = await env.say(alice, tid, "uno", replaces=one["user_message"]["id"])
    assert edit.status_code == 200
    stored = (await env.http.get(url, headers=alice)).json()["data"]
    assert [(m["seq"], m["content"]) for m in stored] == [(1, "uno"), (2, "edited answer")]
    assert [m["content"] for m in env.chats()[-1]["messages"]] == ["uno"]
    # an answer, an unknown message, another thread's message: 400, nothing sent or changed
    other = await env.thread(alice)
    theirs = (await env.say(alice, other["id"], "elsewhere")).json()["user_message"]["id"]
    sent = len(env.chats())
    for ref in (edit.json()["message"]["id"], "msg_nope", theirs):
        r = await env.say(alice, tid, "x", replaces=ref)
        assert r.status_code == 400 and r.json()["error"]["param"] == "replaces", r.text
    assert len(env.chats()) == sent
    assert len((await env.http.get(url, headers=alice)).json()["data"]) == 2


async def test_threads_are_searched_by_title(env: Env) -> None:
    _, alice = await env.user("alice@example.com")
    _, bob = await env.user("bob@example.com")
    for title in ("Rust lifetimes", "rusty bikes", "Cooking 100% rice", "under_score"):
        await env.thread(alice, title=title)
    await env.thread(bob, title="Rust for bob")

    async def titles(q: str) -> list[str]:
        r = await env.http.get(env.url + "/api/v1/threads", headers=alice, params={"q": q})
        return sorted(t["title"] for t in r.json()["data"])

    assert await titles("rust") == ["Rust lifetimes", "rusty bikes"]
    assert await titles("100%") == ["Cooking 100% rice"]
    assert await titles("ru_t") == []  # no wildcards
    assert await titles("_") == ["under_score"]
