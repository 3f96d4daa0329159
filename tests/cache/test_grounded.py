"""A grounded answer is cached only as long as its sources stand: a change to a knowledge base it answers from
makes the next request a miss, and a caller who may no longer read the knowledge base gets its 404, never the
cached answer."""

from __future__ import annotations

from typing import Any

from thinktank.knowledge.embeddings import LocalEmbedder

from .conftest import CacheEnv, Start


async def _upload(env: CacheEnv, owner: dict[str, str], name: str, text: str) -> None:
    r = await env.http.post(env.url + "/api/v1/knowledge-bases/handbook/documents", headers=owner,
                            files={"files": (name, text.encode(), "text/markdown")})
    assert r.status_code in (200, 201), r.text


async def test_a_grounded_answer_follows_its_knowledge_base(cache_env: Start, local_embedder: LocalEmbedder) -> None:
    env = await cache_env({"enabled": True}, local_embedder=local_embedder)
    owner = await env.user("owner@example.com")
    reader = await env.user("reader@example.com")
    made = await env.http.post(env.url + "/api/v1/knowledge-bases", headers=owner, json={"name": "handbook"})
    assert made.status_code == 201, made.text
    kb_id = made.json()["id"]
    await _upload(env, owner, "tea.md", "# Tea\n\nGreen tea is steeped at 80 degrees for two minutes.")
    share = await env.http.post(env.url + "/api/v1/knowledge-bases/handbook/shares", headers=owner,
                                json={"user": "reader@example.com"})
    assert share.status_code == 201, share.text

    async def ask(**body: Any) -> Any:
        return await env.chat(reader, knowledge_bases=[kb_id],
                              messages=[{"role": "user", "content": "How hot is the water for green tea?"}], **body)

    first = await ask()
    assert first.status_code == 200, first.text
    assert first.headers["x-thinktank-cache"] == "miss" and env.calls() == 1
    again = await ask()
    assert again.headers["x-thinktank-cache"] == "hit" and env.calls() == 1
    assert again.json()["choices"] == first.json()["choices"]

    # The knowledge base changes: its answer may too, so the same question is asked again (then cached again).
    await _upload(env, owner, "coffee.md", "# Coffee\n\nEspresso is brewed at 93 degrees.")
    changed = await ask()
    assert changed.headers["x-thinktank-cache"] == "miss" and env.calls() == 2
    assert (await ask()).headers["x-thinktank-cache"] == "hit" and env.calls() == 2

    # The share is taken back: the reader gets the knowledge base's 404, not the answer kept for them.
    shares = (await env.http.get(env.url + "/api/v1/knowledge-bases/handbook/shares", headers=owner)).json()["data"]
    for s in shares:
        gone = await env.http.delete(env.url + f"/api/v1/knowledge-bases/handbook/shares/{s['id']}", headers=owner)
        assert gone.status_code == 204
    refused = await ask()
    assert refused.status_code == 404, refused.text
    assert "hit" not in refused.headers.get("x-thinktank-cache", "")
    assert env.calls() == 2
    streamed = await ask(stream=True)
    assert streamed.status_code == 404 and env.calls() == 2
