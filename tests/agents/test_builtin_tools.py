"""The built-in tools of agents over real services: knowledge bases and memories on SQLite with the local
embedder, a Router of priced mock models behind the catalog (with a real budget ledger), a real web server
on loopback for fetch_url, and a fixed clock."""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from thinktank.accounts.budget_backends import BudgetSpec, SqlBudgetStore
from thinktank.accounts.budgets import BudgetExceededError, BudgetLedger
from thinktank.accounts.governance import BudgetMeter
from thinktank.accounts.principal import Principal
from thinktank.agents.builtin import BuiltinTools
from thinktank.agents.config import BUILTIN_TOOLS
from thinktank.agents.tools import Tool, ToolContext, ToolError, ToolOutput
from thinktank.catalog import Catalog
from thinktank.config import MemoryConfig, parse_config
from thinktank.conversations.memory import MemoryService
from thinktank.errors import InvalidRequestError
from thinktank.gateway.context import CallContext
from thinktank.gateway.router import Router
from thinktank.knowledge.embeddings import LOCAL_MODEL, Embedder, LocalEmbedder
from thinktank.knowledge.grounding import Citation
from thinktank.knowledge.ingest import Source
from thinktank.knowledge.service import KnowledgeService
from thinktank.knowledge.urls import UrlFetcher, UrlPolicy
from thinktank.providers.base import ProviderContext
from thinktank.providers.mock import MockProvider
from thinktank.store.db import Database
from thinktank.store.tables import User
from thinktank.types import ChatRequest, message_text

from ..fakes.clock import FakeClock
from ..fakes.databases import make_sqlite
from ..fakes.documents import pdf
from ..fakes.server import serving

ALICE = Principal(user_id="usr_alice", role="member", email="alice@example.com")
BOB = Principal(user_id="usr_bob", role="member", email="bob@example.com")

PRICE = 1000.0
"""USD per million tokens, in and out: a call of a few dozen tokens costs a few cents."""


@dataclass
class World:
    db: Database
    clock: FakeClock
    router: Router
    catalog: Catalog
    knowledge: KnowledgeService
    memory: MemoryService
    tools: BuiltinTools

    def tool(self, name: str) -> Tool:
        found = self.tools.get(name)
        assert found is not None
        return found

    def tc(self, who: Principal = ALICE, *, ctx: CallContext | None = None, **fields: Any) -> ToolContext:
        return ToolContext(principal=who, ctx=ctx or CallContext(principal=who), clock=self.clock, run_id="run_test",
                           **fields)

    async def call(self, name: str, arguments: Any, who: Principal = ALICE, **fields: Any) -> ToolOutput:
        return await self.tool(name).call(arguments, self.tc(who, **fields))

    def requests(self, model: str) -> list[ChatRequest]:
        for dep in self.router.deployments:
            if dep.name == model:
                assert isinstance(dep.model, MockProvider)
                return dep.model.requests
        raise KeyError(model)


def _mock(name: str, price: float | None = None, **options: Any) -> dict[str, Any]:
    dep: dict[str, Any] = {"name": name, "provider": "mock", "options": options}
    if price is not None:
        dep.update(input_price=price, output_price=price)
    return dep


@pytest.fixture
async def world(tmp_path: Path, ctx: ProviderContext, clock: FakeClock,
                local_embedder: LocalEmbedder) -> AsyncIterator[World]:
    db = Database(await asyncio.to_thread(make_sqlite, tmp_path))
    async with db.session() as s:
        for p in (ALICE, BOB):
            s.add(User(id=p.user_id, email=p.email, role=p.role, created_at=1.0))
    config = parse_config({"models": [
        _mock("helper", PRICE, rules=[{"match": "capital of France", "reply": "Paris is the capital."}]),
        _mock("thinker"),
        _mock("other"),
    ], "router": {"num_retries": 0}})
    router = Router(config, ctx, rng=random.Random(7))
    catalog = Catalog(router)

    def embedder_for(model: str, _ctx: object = None) -> Embedder:
        if model != LOCAL_MODEL:
            raise InvalidRequestError(f"no embedding model '{model}'", param="embedding_model")
        return local_embedder

    knowledge = KnowledgeService(db, clock, embedder_for)
    catalog.bind_knowledge(knowledge)
    memory = MemoryService(db, clock, MemoryConfig(), local_embedder)
    # The app's default fetcher: public addresses on the standard ports only.
    tools = BuiltinTools(catalog, knowledge, memory, UrlFetcher(), clock)
    yield World(db, clock, router, catalog, knowledge, memory, tools)
    await db.close()


def _with_fetcher(world: World, fetcher: UrlFetcher) -> BuiltinTools:
    return BuiltinTools(world.catalog, world.knowledge, world.memory, fetcher, world.clock)


# -- the set and its schemas ---------------------------------------------------------------------


def test_every_builtin_tool_has_a_strict_schema(world: World) -> None:
    assert BuiltinTools.names() == world.tools.names() == BUILTIN_TOOLS
    for name in BUILTIN_TOOLS:
        spec = world.tool(name).spec
        assert (spec.name, spec.qualified, spec.server) == (name, name, None)
        assert len(spec.description) > 40
        schema = spec.parameters
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        assert set(schema["required"]) <= set(schema["properties"])
        assert all(p.get("description") for p in schema["properties"].values())
        assert spec.openai()["function"]["parameters"] is schema
    required = {n: world.tool(n).spec.parameters["required"] for n in BUILTIN_TOOLS}
    assert required == {"knowledge_search": ["query"], "ask_model": ["model", "question"], "fetch_url": ["url"],
                        "memory_recall": [], "memory_remember": ["text"], "memory_forget": ["id"],
                        "current_time": []}
    for other in ("shell", "git.git_log", "", "Knowledge_search"):
        assert world.tools.get(other) is None


BAD_ARGUMENTS: list[tuple[str, Any, str]] = [
    ("knowledge_search", ["query"], "JSON object"),
    ("knowledge_search", {}, "'query' is required"),
    ("knowledge_search", {"query": "   "}, "must not be empty"),
    ("knowledge_search", {"query": 5}, "must be a string"),
    ("knowledge_search", {"query": "x", "top_k": "3"}, "integer"),
    ("knowledge_search", {"query": "x", "top_k": True}, "integer"),
    ("knowledge_search", {"query": "x", "top_k": 21}, "between 1 and 20"),
    ("knowledge_search", {"query": "x", "knowledge_bases": "handbook"}, "list of names"),
    ("knowledge_search", {"query": "x", "knowledge_bases": [1]}, "list of names"),
    ("knowledge_search", {"query": "x", "sql": "drop"}, "unknown argument(s) sql"),
    ("ask_model", {"model": "helper"}, "'question' is required"),
    ("ask_model", {"model": ["helper"], "question": "q"}, "must be a string"),
    ("ask_model", {"model": "helper", "question": "q", "system": {"role": "x"}}, "must be a string"),
    ("fetch_url", {"url": None}, "'url' is required"),
    ("fetch_url", {"url": "http://example.com/", "max_chars": 10}, "between 100 and 20000"),
    ("fetch_url", {"url": "http://example.com/", "max_chars": 1.5}, "integer"),
    ("memory_recall", {"limit": 0}, "between 1 and 50"),
    ("memory_recall", {"query": 3}, "must be a string"),
    ("memory_remember", {"text": "Likes tea.", "kind": "secret"}, "one of fact, interest, preference"),
    ("memory_remember", {"text": "x" * 501}, "at most 500"),
    ("memory_remember", {"text": "!!!"}, "needs some words"),
    ("memory_forget", {"id": 12}, "must be a string"),
    ("current_time", {"timezone": 1}, "must be a string"),
    ("current_time", None, "JSON object"),
]


@pytest.mark.parametrize(("name", "arguments", "said"), BAD_ARGUMENTS)
async def test_wrong_arguments_are_tool_errors(world: World, name: str, arguments: Any, said: str) -> None:
    with pytest.raises(ToolError) as caught:
        await world.call(name, arguments, models=["helper"])
    assert said in caught.value.message
    assert world.requests("helper") == []  # nothing was asked


# -- knowledge_search ----------------------------------------------------------------------------


async def _knowledge(world: World) -> tuple[str, str]:
    mine = (await world.knowledge.create(ALICE, "handbook")).kb
    await world.knowledge.add(ALICE, mine.id, [
        Source("vacation.md", b"# Vacation policy\n\nEmployees get 25 vacation days per year. Unused vacation days "
                              b"carry over until March."),
        Source("laptops.md", b"# Laptops\n\nEvery engineer receives a laptop on their first day."),
    ])
    theirs = (await world.knowledge.create(BOB, "vault")).kb
    await world.knowledge.add(BOB, theirs.id, [Source("secret.txt", b"The launch code is swordfish. Vacation days "
                                                                      b"for Bob: unlimited.")])
    return mine.id, theirs.id


async def test_knowledge_search_returns_numbered_passages_and_citations(world: World) -> None:
    mine, _ = await _knowledge(world)
    out = await world.call("knowledge_search", {"query": "how many vacation days do I get?", "top_k": 2,
                                                "knowledge_bases": ["handbook"]})
    assert out.text.startswith('[1] Vacation policy (knowledge base "handbook", part 1')
    assert "25 vacation days per year" in out.text
    assert out.citations is not None and 1 <= len(out.citations) <= 2
    first = out.citations[0]
    assert set(first) == {f.name for f in fields(Citation)}  # the shape of grounded answers' citations
    assert (first["index"], first["kb_id"], first["kb_name"], first["source"], first["title"]) == (
        1, mine, "handbook", "vacation.md", "Vacation policy")
    assert "25 vacation days" in first["snippet"] and isinstance(first["score"], float)
    assert [c["index"] for c in out.citations] == list(range(1, len(out.citations) + 1))
    assert not out.is_error


async def test_knowledge_search_defaults_to_the_agents_then_all_readable_knowledge_bases(world: World) -> None:
    mine, theirs = await _knowledge(world)
    other = (await world.knowledge.create(ALICE, "recipes")).kb.id
    await world.knowledge.add(ALICE, other, [Source("soup.txt", b"Vacation soup: leeks, potatoes, salt.")])

    everything = await world.call("knowledge_search", {"query": "vacation days swordfish launch code"})
    assert everything.citations is not None
    assert {c["kb_id"] for c in everything.citations} == {mine, other}  # never Bob's
    assert "swordfish" not in everything.text and theirs not in str(everything.data)

    configured = await world.call("knowledge_search", {"query": "vacation"}, knowledge_bases=["recipes"])
    assert configured.citations is not None and {c["source"] for c in configured.citations} == {"soup.txt"}

    # Shared with her, Bob's knowledge base is hers to search too.
    await world.knowledge.share(BOB, theirs, "read", user=ALICE.user_id)
    shared = await world.call("knowledge_search", {"query": "launch code", "knowledge_bases": [theirs]})
    assert shared.citations is not None and shared.citations[0]["source"] == "secret.txt"


async def test_knowledge_search_refuses_another_users_knowledge_base(world: World) -> None:
    mine, theirs = await _knowledge(world)
    for named in ([theirs], ["vault"], ["handbook", theirs]):
        with pytest.raises(ToolError, match="not found") as caught:
            await world.call("knowledge_search", {"query": "launch code", "knowledge_bases": named})
        assert "swordfish" not in caught.value.message
    with pytest.raises(ToolError, match="not found"):  # nor through the agent's configuration
        await world.call("knowledge_search", {"query": "launch code"}, knowledge_bases=[theirs])
    with pytest.raises(ToolError, match="no knowledge bases"):
        await world.call("knowledge_search", {"query": "anything"}, who=Principal(user_id="usr_new", role="member"))
    own = await world.call("knowledge_search", {"query": "launch code swordfish", "knowledge_bases": [mine]})
    assert own.citations is not None and {c["kb_id"] for c in own.citations} <= {mine}
    assert "swordfish" not in own.text


# -- ask_model -----------------------------------------------------------------------------------


async def test_ask_model_answers_and_its_cost_reaches_the_runs_context(world: World) -> None:
    run_ctx = CallContext(principal=ALICE)
    tc = world.tc(ctx=run_ctx, models=["helper", "thinker"])
    out = await world.tool("ask_model").call(
        {"model": "helper", "question": "What is the capital of France?", "system": "Answer in one sentence."}, tc)
    assert out.text == "Paris is the capital."
    [request] = world.requests("helper")
    assert [(m.role, message_text(m)) for m in request.messages] == [
        ("system", "Answer in one sentence."), ("user", "What is the capital of France?")]
    [record] = run_ctx.records
    assert record.model == "helper" and record.deployment == "helper" and record.cost > 0
    assert record.cost == pytest.approx((record.prompt_tokens + record.completion_tokens) * PRICE / 1e6)
    assert out.data == {"model": "helper", "run_id": None, "deployment": "helper",
                        "prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens,
                        "cost_usd": round(record.cost, 10)}
    assert run_ctx.cost() == pytest.approx(record.cost)

    # An unpriced model adds a record of no cost, in the same context.
    await world.tool("ask_model").call({"model": "thinker", "question": "Hello?"}, tc)
    assert [r.model for r in run_ctx.records] == ["helper", "thinker"] and run_ctx.records[1].cost == 0


async def test_ask_model_only_asks_the_agents_models_the_caller_may_use(world: World) -> None:
    with pytest.raises(ToolError) as caught:
        await world.call("ask_model", {"model": "other", "question": "hi"}, models=["helper", "thinker"])
    assert "'other' cannot be asked" in caught.value.message and "helper, thinker" in caught.value.message
    limited = Principal(user_id=ALICE.user_id, role="member", allowed_models=frozenset({"thinker"}))
    with pytest.raises(ToolError) as caught:
        await world.call("ask_model", {"model": "helper", "question": "hi"}, who=limited,
                         models=["helper", "thinker"])
    assert caught.value.message.endswith("the models you can ask: thinker")  # not 'helper', hidden from the key
    with pytest.raises(ToolError, match="none"):
        await world.call("ask_model", {"model": "helper", "question": "hi"})
    with pytest.raises(ToolError, match="cannot be asked"):  # listed but not in the catalog
        await world.call("ask_model", {"model": "ghost", "question": "hi"}, models=["ghost"])
    assert world.requests("helper") == [] and world.requests("other") == []


async def test_ask_model_is_held_to_the_callers_budget(world: World) -> None:
    ledger = BudgetLedger(SqlBudgetStore(world.db, world.clock), world.clock)
    spec = BudgetSpec("user", ALICE.user_id, 0.01, "total", "user alice@example.com")
    run_ctx = CallContext(meter=BudgetMeter(ledger, [spec], 1000), principal=ALICE)
    tc = world.tc(ctx=run_ctx, models=["helper"])
    with pytest.raises(BudgetExceededError):  # not a ToolError: the run stops
        await world.tool("ask_model").call({"model": "helper", "question": "What is the capital of France?"}, tc)
    assert world.requests("helper") == []  # refused before anything was sent
    assert run_ctx.records == []


# -- fetch_url -----------------------------------------------------------------------------------

PAGE = (b"<html><head><title>The Example Page</title><script>var leak = 'no';</script></head><body>"
        b"<nav>Home | About</nav><h1>Welcome</h1><p>This page is about <b>otters</b>.</p><ul><li>They swim.</li>"
        b"<li>They sleep holding hands.</li></ul></body></html>")


@dataclass
class Site:
    url: str
    paths: list[str]


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    """A web server on loopback with a page, a PDF, plain text, a long text, binary data and a 404."""
    paths: list[str] = []

    def route(body: bytes, media_type: str | None, status: int = 200) -> Any:
        async def endpoint(request: Request) -> Response:
            paths.append(request.url.path)
            return Response(body, status_code=status, media_type=media_type)
        return endpoint

    long_text = " ".join(f"word{i}" for i in range(5000)).encode()
    app = Starlette(routes=[
        Route("/page", route(PAGE, "text/html; charset=utf-8")),
        Route("/paper", route(pdf(["Otters hold hands.", "Page two is about rivers."], title="Otter Paper"),
                              "application/pdf")),
        Route("/notes.txt", route(b"Plain notes about otters.", "text/plain")),
        Route("/feed", route(b"<rss><item>otters</item></rss>", "application/rss+xml")),
        Route("/long", route(long_text, "text/plain")),
        Route("/blob", route(b"\x00\x01\x02binary", "application/octet-stream")),
        Route("/fake.txt", route(b"\x00\x01\x02binary", "text/plain")),
        Route("/gone", route(b"not here", "text/plain", 404)),
    ])
    async with serving(app) as url:
        yield Site(url, paths)


def _loopback_fetcher(site: Site) -> UrlFetcher:
    port = int(site.url.rsplit(":", 1)[1])
    return UrlFetcher(UrlPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),),
                                allowed_ports=frozenset({port})))


async def test_fetch_url_returns_title_and_text(world: World, site: Site) -> None:
    fetch = _with_fetcher(world, _loopback_fetcher(site)).get("fetch_url")
    assert fetch is not None
    tc = world.tc()
    page = await fetch.call({"url": f"{site.url}/page#top"}, tc)
    assert page.text == (f"Title: The Example Page\nURL: {site.url}/page\n\n# Welcome\n\n"
                         "This page is about otters .\n\n- They swim.\n\n- They sleep holding hands.")
    assert "leak" not in page.text and "Home | About" not in page.text
    assert page.data == {"url": f"{site.url}/page", "title": "The Example Page",
                         "content_type": "text/html; charset=utf-8", "truncated": False}

    paper = await fetch.call({"url": f"{site.url}/paper"}, tc)
    assert paper.text.startswith("Title: Otter Paper\n")
    assert "[page 1]\n\nOtters hold hands." in paper.text and "[page 2]\n\nPage two is about rivers." in paper.text

    notes = await fetch.call({"url": f"{site.url}/notes.txt"}, tc)
    assert notes.text == f"URL: {site.url}/notes.txt\n\nPlain notes about otters."
    feed = await fetch.call({"url": f"{site.url}/feed"}, tc)  # a text type the parsers do not name
    assert "<item>otters</item>" in feed.text

    long = await fetch.call({"url": f"{site.url}/long", "max_chars": 1000}, tc)
    body = long.text.split("\n\n", 1)[1]
    assert body.endswith("\n[... cut at 1000 characters]")
    assert 900 < len(body.split("\n[...")[0]) <= 1000 and long.data["truncated"] is True
    default = await fetch.call({"url": f"{site.url}/long"}, tc)
    assert 7900 < len(default.text.split("\n\n", 1)[1].split("\n[...")[0]) <= 8000

    for path, said in (("/blob", r"type \(application/octet-stream\) cannot be read"), ("/fake.txt", "binary data"),
                       ("/gone", "HTTP 404")):
        with pytest.raises(ToolError, match=said):
            await fetch.call({"url": f"{site.url}{path}"}, tc)
    with pytest.raises(ToolError, match="only http and https"):
        await fetch.call({"url": "file:///etc/passwd"}, tc)


async def test_fetch_url_with_the_default_fetcher_refuses_private_addresses(world: World, site: Site) -> None:
    port = site.url.rsplit(":", 1)[1]
    for url in (f"http://127.0.0.1:{port}/page", "http://127.0.0.1/page", "http://169.254.169.254/latest/meta-data/",
                "http://[::ffff:127.0.0.1]/", "http://localhost/", "http://10.0.0.1:8080/"):
        with pytest.raises(ToolError) as caught:
            await world.call("fetch_url", {"url": url})
        assert "was refused" in caught.value.message and "not a public" in caught.value.message, url
    assert site.paths == []  # nothing reached the server


# -- memory --------------------------------------------------------------------------------------


async def test_memory_round_trip_and_forgetting(world: World) -> None:
    empty = await world.call("memory_recall", {})
    assert empty.text == "Nothing is remembered about the user." and empty.data == []
    lyon = await world.call("memory_remember", {"text": "Lives in Lyon."})
    assert lyon.text.startswith("Remembered: mem_") and lyon.data["kind"] == "fact"
    world.clock.advance(10)
    tea = await world.call("memory_remember", {"text": "  Prefers   green tea. ", "kind": "preference"})
    assert tea.data["text"] == "Prefers green tea." and tea.data["kind"] == "preference"
    world.clock.advance(10)
    again = await world.call("memory_remember", {"text": "lives in LYON"})
    assert again.text.startswith("Already remembered (confirmed): " + lyon.data["id"])
    assert again.data["mentions"] == 2

    relevant = await world.call("memory_recall", {"query": "what city does the user live in?", "limit": 1})
    assert [m["id"] for m in relevant.data] == [lyon.data["id"]]
    assert relevant.text == f"- {lyon.data['id']} (fact) Lives in Lyon."
    latest = await world.call("memory_recall", {"limit": 1})
    assert [m["id"] for m in latest.data] == [lyon.data["id"]]  # confirmed last, so the latest
    both = await world.call("memory_recall", {})
    assert {m["id"] for m in both.data} == {lyon.data["id"], tea.data["id"]}

    # Bob's memories are not Alice's to recall or forget.
    bobs = await world.call("memory_remember", {"text": "Works as a pilot."}, who=BOB)
    assert "pilot" not in (await world.call("memory_recall", {"query": "pilot job"})).text
    with pytest.raises(ToolError, match="no memory"):
        await world.call("memory_forget", {"id": bobs.data["id"]})
    assert [f.id for f in await world.memory.list_facts(BOB)] == [bobs.data["id"]]

    gone = await world.call("memory_forget", {"id": tea.data["id"]})
    assert gone.text == f"Forgotten: {tea.data['id']}"
    assert [f.id for f in await world.memory.list_facts(ALICE)] == [lyon.data["id"]]
    with pytest.raises(ToolError, match="no memory"):
        await world.call("memory_forget", {"id": tea.data["id"]})


async def test_memory_switched_off(world: World) -> None:
    kept = await world.call("memory_remember", {"text": "Lives in Lyon."})
    await world.memory.set_enabled(ALICE.user_id, False)
    with pytest.raises(ToolError, match="memory is switched off"):
        await world.call("memory_remember", {"text": "Likes jazz."})
    with pytest.raises(ToolError, match="memory is switched off"):
        await world.call("memory_recall", {"query": "music"})
    assert [f.text for f in await world.memory.list_facts(ALICE)] == ["Lives in Lyon."]
    await world.call("memory_forget", {"id": kept.data["id"]})  # what is stored can still be deleted
    assert await world.memory.list_facts(ALICE) == []
    assert (await world.call("memory_remember", {"text": "Likes jazz."}, who=BOB)).text.startswith("Remembered")


# -- current_time --------------------------------------------------------------------------------


async def test_current_time_from_the_injected_clock(world: World) -> None:
    assert world.clock.time() == 1_700_000_000.0
    utc = await world.call("current_time", {})
    assert utc.text == "2023-11-14T22:13:20+00:00 (UTC, Tuesday)"
    assert utc.data == {"iso": "2023-11-14T22:13:20+00:00", "timezone": "UTC", "unix": 1_700_000_000.0}
    paris = await world.call("current_time", {"timezone": "Europe/Paris"})
    assert paris.text == "2023-11-14T23:13:20+01:00 (Europe/Paris, Tuesday)"
    tokyo = await world.call("current_time", {"timezone": "Asia/Tokyo"})
    assert tokyo.data["iso"] == "2023-11-15T07:13:20+09:00"
    world.clock.advance(86_400 * 200)  # into summer time
    assert (await world.call("current_time", {"timezone": "America/New_York"})).data["iso"] == \
        "2024-06-01T18:13:20-04:00"
    for bad in ("Mars/Olympus_Mons", "../../etc/passwd", "/etc/localtime", "Europe/", "Europe", "a\x00b"):
        with pytest.raises(ToolError, match="unknown time zone"):
            await world.call("current_time", {"timezone": bad})
