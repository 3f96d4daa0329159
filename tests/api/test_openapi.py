"""``/docs`` lists every endpoint: FastAPI's routes and the OpenAI endpoints served by raw handlers."""

from __future__ import annotations

from typing import Any

import httpx

from .conftest import Start


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


async def test_the_openai_endpoints_are_documented(gateway: Start, client: httpx.AsyncClient) -> None:
    api = await gateway({"models": [{"name": "m", "provider": "mock"}]})
    schema = (await client.get(api + "/openapi.json")).json()
    paths = schema["paths"]
    assert {"/v1/chat/completions", "/v1/embeddings", "/v1/models", "/v1/models/{model}"} <= set(paths)
    assert "/api/v1/ensembles" in paths and "/api/v1/threads" in paths  # FastAPI's own are still there
    chat = paths["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatRequest")
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    # every reference resolves
    components = schema["components"]["schemas"]
    missing = {r for r in _refs(schema) if r.removeprefix("#/components/schemas/") not in components}
    assert not missing, missing
    assert "messages" in components["ChatRequest"]["properties"]
    assert (await client.get(api + "/docs")).status_code == 200
