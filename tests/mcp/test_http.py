"""``/mcp`` over streamable HTTP: thinktank on loopback (uvicorn, SQLite, the local embedder, mock models) and the
official SDK's client, in both eras of the protocol (the 2026-07-28 per-request envelope the client picks by
default, and the initialize handshake). Every call acts as the key's user: their models, runs, knowledge
bases, memories and limits."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from thinktank.knowledge.urls import UrlFetcher, UrlPolicy

from ..fakes.server import serving
from .conftest import ADMIN, AUTH, Served, resource_text, text_of

TEA = ("# Tea guide\n\nGreen tea is steeped at 80 degrees for two minutes.\n\n## Black tea\n\n"
       "Black tea takes boiling water and four minutes.")


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_tools_models_and_an_answer(served: Served, mode: str) -> None:
    async with served.client(mode=mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == {"list_models", "ask_model", "run_ensemble", "run_debate", "get_run", "search_knowledge",
                              "add_document", "remember", "recall", "forget"}
        ask = tools["ask_model"].input_schema
        assert ask["type"] == "object" and set(ask["required"]) == {"model", "question"}
        assert ask["additionalProperties"] is False
        assert ask["properties"]["max_tokens"] == {**ask["properties"]["max_tokens"], "type": "integer",
                                                   "minimum": 1}
        assert tools["forget"].annotations is not None and tools["forget"].annotations.destructive_hint

        listed = await client.call_tool("list_models", {})
        ids = [m["id"] for m in listed.structured_content["models"]]
        assert {"alpha", "beta", "librarian", "ensemble/council", "debate/panel"} <= set(ids)

        answer = await client.call_tool("ask_model", {"model": "alpha", "question": "Which database?"})
        assert not answer.is_error
        assert text_of(answer) == "Alpha says: use PostgreSQL."
        assert answer.structured_content["served_by"] == "alpha"

        # an ensemble is a model like any other: its run is named
        composite = await client.call_tool("ask_model", {"model": "ensemble/council", "question": "Which database?"})
        assert text_of(composite) == "Fused: use PostgreSQL, start simple."
        run_id = composite.structured_content["run_id"]
        assert run_id.startswith("run_")
        run = await client.call_tool("get_run", {"run_id": run_id})
        assert run.structured_content["status"] == "completed" and run.structured_content["kind"] == "ensemble"


async def test_an_ensemble_reports_its_progress(served: Served) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with served.client() as client:
        result = await client.call_tool("run_ensemble", {"ensemble": "council", "question": "Which database?"},
                                        progress_callback=progress)
    assert not result.is_error, text_of(result)
    assert text_of(result).startswith("Fused: use PostgreSQL, start simple.")
    summary = result.structured_content
    assert summary["status"] == "completed" and summary["answer"] == "Fused: use PostgreSQL, start simple."
    assert [done for done, _, _ in seen] == [1, 2, 3]
    stages = [message.split(" finished")[0] for _, _, message in seen if message]
    assert stages == ["answer", "rank", "synthesis"]
    # the run is the caller's, recorded as the API records it
    r = await served.http.get(served.url + f"/api/v1/runs/{summary['id']}", headers=AUTH)
    assert r.status_code == 200 and r.json()["result"]["answer"] == summary["answer"]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_debate_with_a_plan_and_its_documents_as_resources(served: Served, mode: str) -> None:
    messages: list[str] = []

    async def progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    async with served.client(mode=mode) as client:
        result = await client.call_tool("run_debate", {"debate": "panel", "question": "Which database?", "plan": True,
                                                       "rounds": 2}, progress_callback=progress)
        assert not result.is_error, text_of(result)
        assert "Start with PostgreSQL." in text_of(result)
        run_id = result.structured_content["id"]
        links = [b for b in result.content if b.type == "resource_link"]
        assert [str(link.uri) for link in links] == [f"thinktank://runs/{run_id}/plan.md",
                                                     f"thinktank://runs/{run_id}/tasks.md"]
        assert any(m.startswith("round 1 finished") for m in messages)
        assert messages[-1].startswith("planning finished")

        plan = await client.read_resource(f"thinktank://runs/{run_id}/plan.md")
        assert resource_text(plan) == "# Plan\n## Goal\nShip v1 on PostgreSQL."
        assert plan.contents[0].mime_type == "text/markdown"
        tasks = await client.read_resource(f"thinktank://runs/{run_id}/tasks.md")
        assert resource_text(tasks).startswith("# Tasks")
        templates = [t.uri_template for t in (await client.list_resource_templates()).resource_templates]
        assert "thinktank://runs/{run_id}/plan.md" in templates
        assert "thinktank://knowledge-bases/{kb}/documents/{doc_id}" in templates


async def test_knowledge_search_cites_documents_and_kb_models_answer_from_them(served: Served) -> None:
    kb_id = await served.knowledge_base("handbook")
    async with served.client() as client:
        added = await client.call_tool("add_document", {"knowledge_base": "handbook", "name": "guides/tea.md",
                                                        "text": TEA})
        assert not added.is_error, text_of(added)
        doc = added.structured_content
        assert doc["status"] == "added" and doc["document_status"] == "approved" and doc["chunks"] >= 1
        assert doc["source"] == "guides/tea.md"

        found = await client.call_tool("search_knowledge", {"knowledge_bases": ["handbook"],
                                                            "query": "how long to steep green tea"})
        assert not found.is_error, text_of(found)
        [first, *_] = found.structured_content["results"]
        assert first["document_id"] == doc["document_id"] and first["knowledge_base_id"] == kb_id
        assert "80 degrees" in first["snippet"] and isinstance(first["position"], int)
        assert first["title"] == "Tea guide" and first["uri"] == doc["uri"]
        assert "80 degrees" in text_of(found) and doc["document_id"] in text_of(found)

        answer = await client.call_tool("ask_model", {"model": "kb/handbook", "question": "How do I steep green tea?"})
        assert not answer.is_error, text_of(answer)
        assert "80 degrees" in answer.structured_content["answer"]
        [citation] = answer.structured_content["citations"]
        assert citation["document_id"] == doc["document_id"]
        assert "Sources:" in text_of(answer)

        # any model, grounded in the knowledge base on request
        grounded = await client.call_tool("ask_model", {"model": "librarian", "question": "Black tea?",
                                                        "knowledge_bases": [kb_id]})
        assert grounded.structured_content["citations"], grounded.structured_content

        # the documents are resources
        listed = [str(r.uri) for r in (await client.list_resources()).resources]
        assert f"thinktank://knowledge-bases/{kb_id}/documents/{doc['document_id']}" in listed
        read = await client.read_resource(doc["uri"])
        assert "Green tea is steeped at 80 degrees" in resource_text(read)
        listing = await client.read_resource("thinktank://knowledge-bases/handbook/documents")
        assert doc["document_id"] in resource_text(listing)

        # the same name again, unchanged: nothing new
        again = await client.call_tool("add_document", {"knowledge_base": kb_id, "name": "guides/tea.md", "text": TEA})
        assert again.structured_content["status"] == "unchanged"


async def test_on_both_databases(served_db: Served) -> None:
    """What the MCP server reads and writes itself (a document's text, with its access rule), and through the
    services, on SQLite and on PostgreSQL."""
    served = served_db
    owner = await served.user("olga@example.com")
    reader = await served.user("rita@example.com")
    kb_id = await served.knowledge_base("shared", owner)
    r = await served.http.post(served.url + f"/api/v1/knowledge-bases/{kb_id}/shares",
                               headers={"Authorization": f"Bearer {owner}"},
                               json={"user": "rita@example.com", "access": "read"})
    assert r.status_code == 201, r.text
    async with served.client(reader) as client:
        contributed = await client.call_tool("add_document", {"knowledge_base": kb_id, "name": "tip.md",
                                                              "text": "Oolong is steeped at 90 degrees."})
        assert contributed.structured_content["document_status"] == "pending"
        assert "review" in text_of(contributed)
        own = await client.read_resource(contributed.structured_content["uri"])  # the author reads it
        assert "Oolong" in resource_text(own)
        kept = await client.call_tool("remember", {"text": "Drinks oolong."})
        assert not kept.is_error
        assert (await client.call_tool("recall", {"query": "tea"})).structured_content["memories"][0]["text"] == \
            "Drinks oolong."
    async with served.client(owner) as client:
        added = await client.call_tool("add_document", {"knowledge_base": kb_id, "name": "tea.md", "text": TEA})
        assert added.structured_content["document_status"] == "approved"
        pending = await client.read_resource(contributed.structured_content["uri"])  # an admin of the base
        assert "Oolong" in resource_text(pending)
        run = await client.call_tool("run_debate", {"debate": "panel", "question": "Which database?", "plan": True})
        plan = await client.read_resource(f"thinktank://runs/{run.structured_content['id']}/tasks.md")
        assert resource_text(plan).startswith("# Tasks")
    other = await served.user("sam@example.com")
    async with served.client(other) as client:
        with pytest.raises(MCPError, match="not found"):
            await client.read_resource(added.structured_content["uri"])
    async with served.client(reader) as client:
        found = await client.call_tool("search_knowledge", {"knowledge_bases": [kb_id], "query": "green tea",
                                                            "mode": "keyword"})
        assert found.structured_content["results"][0]["document_id"] == added.structured_content["document_id"]
        approved = await client.read_resource(added.structured_content["uri"])
        assert "Green tea" in resource_text(approved)


async def test_add_document_fetches_public_urls_only(served: Served) -> None:
    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse("<html><head><title>Kettles</title></head><body><p>A kettle boils water for tea and "
                            "switches itself off.</p></body></html>")

    await served.knowledge_base("web")
    async with serving(Starlette(routes=[Route("/kettles", page)])) as site, served.client() as client:
        refused = await client.call_tool("add_document", {"knowledge_base": "web", "url": site + "/kettles"})
        assert refused.is_error and "refused" in text_of(refused)  # loopback: not a public address
        port = int(site.rsplit(":", 1)[1])
        served.app.state.url_fetcher = UrlFetcher(UrlPolicy(
            allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),), allowed_ports=frozenset({port})))
        added = await client.call_tool("add_document", {"knowledge_base": "web", "url": site + "/kettles"})
        assert not added.is_error, text_of(added)
        assert added.structured_content["source"] == site + "/kettles"
        found = await client.call_tool("search_knowledge", {"knowledge_bases": ["web"], "query": "kettle"})
        assert found.structured_content["results"][0]["title"] == "Kettles"


async def test_memory_round_trip(served: Served) -> None:
    token = await served.user("ann@example.com")
    async with served.client(token) as client:
        kept = await client.call_tool("remember", {"text": "Lives in Lyon.", "kind": "fact"})
        assert not kept.is_error, text_of(kept)
        fact = kept.structured_content
        assert fact["new"] is True and fact["text"] == "Lives in Lyon." and fact["enabled"] is True
        await client.call_tool("remember", {"text": "Prefers answers in French.", "kind": "preference"})
        repeat = await client.call_tool("remember", {"text": "lives in lyon", "kind": "fact"})
        assert repeat.structured_content["new"] is False and repeat.structured_content["id"] == fact["id"]

        recalled = await client.call_tool("recall", {"query": "What language should answers be in?"})
        memories = recalled.structured_content["memories"]
        assert memories[0]["text"] == "Prefers answers in French." and len(memories) == 2
        everything = await client.call_tool("recall", {})
        assert [m["text"] for m in everything.structured_content["memories"]] == [
            "Lives in Lyon.", "Prefers answers in French."]

        gone = await client.call_tool("forget", {"memory_id": fact["id"]})
        assert not gone.is_error
        left = await client.call_tool("recall", {})
        assert [m["text"] for m in left.structured_content["memories"]] == ["Prefers answers in French."]
        twice = await client.call_tool("forget", {"memory_id": fact["id"]})
        assert twice.is_error and "There is no memory" in text_of(twice)
    # the same memories through the API, and nobody else's
    mine = await served.http.get(served.url + "/api/v1/me/memory", headers={"Authorization": f"Bearer {token}"})
    assert [m["text"] for m in mine.json()["data"]] == ["Prefers answers in French."]
    async with served.client() as admin:
        theirs = await admin.call_tool("recall", {})
        assert theirs.structured_content["memories"] == []
        other = await admin.call_tool("forget", {"memory_id": mine.json()["data"][0]["id"]})
        assert other.is_error and "There is no memory" in text_of(other)


async def test_a_key_limited_to_one_model_cannot_use_another(served: Served) -> None:
    key = await served.key(models=["alpha"])
    async with served.client(key) as client:
        listed = await client.call_tool("list_models", {})
        assert [m["id"] for m in listed.structured_content["models"]] == ["alpha"]
        ok = await client.call_tool("ask_model", {"model": "alpha", "question": "hi"})
        assert not ok.is_error
        for tool, arguments in [("ask_model", {"model": "beta", "question": "hi"}),
                                ("ask_model", {"model": "ensemble/council", "question": "hi"}),
                                ("run_ensemble", {"ensemble": "council", "question": "hi"}),
                                ("run_debate", {"debate": "panel", "question": "hi"})]:
            refused = await client.call_tool(tool, arguments)
            assert refused.is_error, (tool, arguments)
            assert "does not exist here" in text_of(refused)
    # a key allowed the ensemble but not its members is refused too, naming the member
    partial = await served.key(models=["ensemble/council", "alpha"])
    async with served.client(partial) as client:
        refused = await client.call_tool("run_ensemble", {"ensemble": "council", "question": "hi"})
        assert refused.is_error and "'beta'" in text_of(refused)


async def test_another_users_runs_and_knowledge_are_not_found(served: Served) -> None:
    bob = await served.user("bob@example.com")
    await served.knowledge_base("private")
    async with served.client() as admin:
        run = await admin.call_tool("run_debate", {"debate": "panel", "question": "Which database?", "plan": True})
        run_id = run.structured_content["id"]
    async with served.client(bob) as client:
        missing = await client.call_tool("get_run", {"run_id": run_id})
        assert missing.is_error and f"There is no run '{run_id}'" in text_of(missing)
        with pytest.raises(MCPError, match="There is no run"):
            await client.read_resource(f"thinktank://runs/{run_id}/plan.md")
        search = await client.call_tool("search_knowledge", {"knowledge_bases": ["private"], "query": "tea"})
        assert search.is_error and "not found" in text_of(search)
        add = await client.call_tool("add_document", {"knowledge_base": "private", "text": "Mine now."})
        assert add.is_error and "not found" in text_of(add)
        with pytest.raises(MCPError, match="not found"):
            await client.read_resource("thinktank://knowledge-bases/private/documents")
        assert (await client.list_resources()).resources == []


async def test_rate_limits_apply_to_tool_calls(served: Served) -> None:
    key = await served.key(rpm=2)
    async with served.client(key) as client:
        answers = [await client.call_tool("ask_model", {"model": "alpha", "question": "hi"}) for _ in range(3)]
    assert [a.is_error for a in answers] == [False, False, True]
    assert "try again in" in text_of(answers[2])


async def test_budgets_apply_to_tool_calls_and_usage_is_recorded(served: Served) -> None:
    dora = await served.user("dora@example.com")
    key = await served.key(token=dora, budget_usd=5, budget_period="total")
    async with served.client(key) as client:
        cheap = await client.call_tool("ask_model", {"model": "alpha", "question": "hi"})
        assert not cheap.is_error
        dear = await client.call_tool("ask_model", {"model": "pricey", "question": "hi", "max_tokens": 100})
        assert dear.is_error and "budget" in text_of(dear).lower()
    # recorded as the user's requests, as the API records them
    r = await served.http.get(served.url + "/api/v1/usage?group_by=model", headers={"Authorization": f"Bearer {dora}"})
    rows = {row["group"]: row for row in r.json()["data"]}
    assert set(rows) == {"alpha", "pricey"}
    assert (rows["alpha"]["requests"], rows["alpha"]["errors"]) == (1, 0)
    assert (rows["pricey"]["requests"], rows["pricey"]["errors"]) == (1, 1)
    async with served.client() as client:
        capped = await client.call_tool("run_ensemble", {"ensemble": "costly", "question": "hi", "max_tokens": 50,
                                                         "max_cost_usd": 0.5})
        assert capped.is_error and "budget_exceeded" in text_of(capped)
        assert capped.structured_content["status"] == "budget_exceeded"


async def test_without_a_key_it_is_401(served: Served) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {"accept": "application/json, text/event-stream"}
    none = await served.http.post(served.mcp_url, json=body, headers=headers)
    assert none.status_code == 401 and none.headers["www-authenticate"].startswith("Bearer")
    assert "No API key" in none.json()["error"]["message"]
    wrong = await served.http.post(served.mcp_url, json=body, headers={**headers, "Authorization": "Bearer tt-nope"})
    assert wrong.status_code == 401
    # the web pages' session cookie is not a key here
    token = await served.user("carl@example.com")
    cookie = await served.http.post(served.mcp_url, json=body, headers={**headers, "Cookie": f"tt_session={token}"})
    assert cookie.status_code == 401
    with pytest.raises(BaseExceptionGroup) as refused:  # the SDK's client gives up at once
        async with served.client(None) as client:
            await client.list_tools()
    assert [type(e) for e in leaves(refused.value)] == [MCPError]
    # the key in X-Api-Key does (a stateless server needs no handshake before a call)
    listed = await served.http.post(served.mcp_url, json=body, headers={
        **headers, "X-Api-Key": ADMIN, "MCP-Protocol-Version": "2025-06-18"})
    assert listed.status_code == 200 and "ask_model" in listed.text
    # stateless: no stream to GET, no session to DELETE
    for method in ("GET", "DELETE"):
        r = await served.http.request(method, served.mcp_url, headers={**AUTH, **headers})
        assert r.status_code == 405 and r.headers["allow"] == "POST"


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def test_the_api_loads_the_mcp_sdk_only_for_mcp(tmp_path: Any) -> None:
    code = f"""
import asyncio, sys
from thinktank.api.app import create_app
from thinktank.config import Settings, parse_config
app = create_app(Settings(data_dir={str(tmp_path)!r}, admin_key={ADMIN!r}), parse_config({{"models": []}}), quiet=True)
before = "mcp" in sys.modules
app.mcp
print(before, "mcp" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["False", "True"]
