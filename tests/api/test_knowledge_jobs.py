"""Ingestion as a job over HTTP (``?async=true`` or ``Prefer: respond-async``, then ``GET …/jobs/{id}``), in the
app on loopback: on SQLite the embedded queue runs it in the process, on PostgreSQL procrastinate does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from thinktank.api.app import create_app
from thinktank.config import Settings, parse_config
from thinktank.knowledge.embeddings import LocalEmbedder

from ..fakes.server import serving
from .conftest import AUTH

PASSWORD = "correct horse battery staple"


@pytest.fixture
async def api(settings: Settings, local_embedder: LocalEmbedder, db_url: str) -> AsyncIterator[str]:
    s = Settings.model_validate({**settings.model_dump(), "database_url": db_url})
    async with serving(create_app(s, parse_config({"models": []}), local_embedder=local_embedder)) as url:
        yield url + "/api/v1"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60) as c:
        yield c


async def member(c: httpx.AsyncClient, api: str, email: str) -> dict[str, str]:
    r = await c.post(api + "/users", headers=AUTH, json={"email": email, "password": PASSWORD})
    assert r.status_code == 201, r.text
    login = await c.post(api + "/auth/login", json={"email": email, "password": PASSWORD})
    return {"Authorization": f"Bearer {login.json()['token']}"}


def documents(n: int) -> dict[str, Any]:
    return {"documents": [{"name": f"d{i}.md", "text": f"# Doc {i}\n\nDocument {i} explains item {i} in detail."}
                          for i in range(n)]}


async def finished(c: httpx.AsyncClient, url: str, headers: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = await c.get(url, headers=headers)
        assert r.status_code == 200, r.text
        if r.json()["status"] in ("succeeded", "failed"):
            return dict(r.json())
        await asyncio.sleep(0.05)
    raise AssertionError(f"the job did not end: {r.json()}")


async def test_an_async_ingestion_answers_202_and_its_job_tells_how_it_went(
    api: str, client: httpx.AsyncClient,
) -> None:
    alice = await member(client, api, "alice@example.com")
    kb = (await client.post(api + "/knowledge-bases", headers=alice, json={"name": "docs"})).json()
    body = documents(12)
    body["documents"].append({"name": "again.md", "text": body["documents"][0]["text"]})
    r = await client.post(api + f"/knowledge-bases/{kb['id']}/documents?async=true", headers=alice, json=body)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["object"] == "ingestion_job" and job["total"] == 13 and job["status"] in ("queued", "doing")
    assert r.headers["location"] == f"/api/v1/knowledge-bases/{kb['id']}/jobs/{job['id']}"
    done = await finished(client, api.removesuffix("/api/v1") + r.headers["location"], alice)
    assert (done["status"], done["done"], done["total"], done["error"]) == ("succeeded", 13, 13, None)
    assert done["counts"] == {"added": 12, "replaced": 0, "unchanged": 0, "duplicate": 1, "failed": 0}
    assert [d["index"] for d in done["data"]] == list(range(13)) and done["data"][0]["document_status"] == "approved"
    listed = (await client.get(api + f"/knowledge-bases/{kb['id']}/documents", headers=alice)).json()["data"]
    assert sorted(d["source"] for d in listed) == sorted(f"d{i}.md" for i in range(12))

    bob = await member(client, api, "bob@example.com")
    shared = await client.post(api + f"/knowledge-bases/{kb['id']}/shares", headers=alice,
                               json={"user": "bob@example.com", "access": "read"})
    assert shared.status_code == 201
    for who in (bob, AUTH):  # a reader of the knowledge base, the admin: neither sees Alice's job
        got = await client.get(api + f"/knowledge-bases/{kb['id']}/jobs/{job['id']}", headers=who)
        assert got.status_code == 404, got.text
    assert (await client.get(api + f"/knowledge-bases/{kb['id']}/jobs/ing_nope", headers=alice)).status_code == 404


async def test_the_prefer_header_asks_for_a_job_and_stream_with_async_is_refused(
    api: str, client: httpx.AsyncClient,
) -> None:
    kb = (await client.post(api + "/knowledge-bases", headers=AUTH, json={"name": "docs"})).json()
    url = api + f"/knowledge-bases/{kb['id']}/documents"
    r = await client.post(url, headers=AUTH | {"Prefer": "respond-async, wait=5"}, json=documents(2))
    assert r.status_code == 202 and r.headers["preference-applied"] == "respond-async"
    done = await finished(client, api.removesuffix("/api/v1") + r.headers["location"], AUTH)
    assert done["counts"]["added"] == 2
    refused = await client.post(url + "?async=true&stream=true", headers=AUTH, json=documents(1))
    assert refused.status_code == 400 and "not both" in refused.json()["error"]["message"]
    plain = await client.post(url, headers=AUTH, json=documents(3))  # the synchronous mode is as it was
    assert plain.status_code == 201 and plain.json()["counts"]["unchanged"] == 2
    assert (await client.post(api + "/knowledge-bases/nope/documents?async=true", headers=AUTH,
                              json=documents(1))).status_code == 404
