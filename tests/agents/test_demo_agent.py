"""The README's agent tour, offline: ``agent/demo-researcher`` of ``--demo`` searches a knowledge base, asks to
fetch the page named in the question, waits for the approval, then answers from both with a citation."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from thinktank.discovery import demo_config
from thinktank.knowledge.embeddings import LocalEmbedder
from thinktank.knowledge.urls import UrlFetcher, UrlPolicy

from ..fakes.server import serving
from .agent_apps import AUTH, agents_app

PAGE = ("<html><head><title>Pricing</title></head><body><h1>Pricing</h1>"
        "<p>The basic plan costs 10 dollars a month. Teams pay per seat.</p></body></html>")


async def test_the_demo_researcher_answers_from_a_knowledge_base_and_an_approved_page(
    tmp_path: Path, local_embedder: LocalEmbedder,
) -> None:
    async def pricing(_request: Request) -> Response:
        return HTMLResponse(PAGE)

    async with serving(Starlette(routes=[Route("/pricing", pricing)])) as site:
        port = int(site.rsplit(":", 1)[1])
        config = demo_config().model_dump(mode="json", exclude_none=True)
        async with agents_app(tmp_path, config, local_embedder=local_embedder) as env:
            env.builtin().use_fetcher(UrlFetcher(UrlPolicy(
                allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),), allowed_ports=frozenset({port}))))
            assert (await env.post("/api/v1/knowledge-bases", {"name": "handbook"})).status_code == 201
            text = b"# Refunds\n\nRefunds are paid within 30 days of a return. Keep the receipt."
            r = await env.http.post(env.url + "/api/v1/knowledge-bases/handbook/documents", headers=AUTH,
                                    files=[("files", ("refunds.md", text))])
            assert r.status_code in (200, 201, 202), r.text
            question = f"What is our refund policy, and what does {site}/pricing say?"
            r = await env.post("/v1/chat/completions", {"model": "agent/demo-researcher",
                                                        "messages": [{"role": "user", "content": question}]})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["finish_reason"] == "awaiting_approval"
            run_id = r.headers["x-thinktank-run-id"]
            run = await env.run(run_id)
            assert [c["model"] for c in run["calls"]] == ["demo/researcher", "knowledge_search"]  # fetch waits
            assert (await env.post(f"/api/v1/runs/{run_id}/approve", {})).status_code == 202
            done = await env.settled(run_id)
            assert done["status"] == "completed", done["error"]
            answer = done["result"]["answer"]
            assert "From your documents: Refunds are paid within 30 days of a return. [1]" in answer
            assert 'From the page "Pricing": The basic plan costs 10 dollars a month.' in answer
            [citation] = done["result"]["citations"]
            assert citation["index"] == 1 and citation["title"] and "30 days" in citation["snippet"]
