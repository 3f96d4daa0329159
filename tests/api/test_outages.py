"""The database stopped under a running server (a real PostgreSQL, really stopped): every kind of endpoint answers
503 naming the database, with Retry-After, never a 500; started again, the same server answers as before."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from deploy.multihost.services import PrivatePostgres

from ..fakes.upstream import FakeUpstream
from .conftest import AUTH, Start


@pytest.fixture(scope="module")
def pg() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    yield server
    server.close()


def _database_unavailable(r: httpx.Response) -> bool:
    return (r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable"
            and r.json()["error"]["code"] == "database_unavailable" and int(r.headers["retry-after"]) >= 1)


async def test_every_kind_of_endpoint_answers_503_while_the_database_is_down(
        gateway: Start, client: httpx.AsyncClient, pg: PrivatePostgres, fake_openai: FakeUpstream) -> None:
    cfg = {"models": [{"name": "m", "provider": "openai", "model": "fake-model", "base_url": f"{fake_openai.url}/v1",
                       "api_key": "x"}]}
    url = await gateway(cfg, database_url=pg.url, auth_cache_ttl=0)  # every request looks its key up
    key = (await client.post(url + "/api/v1/keys", json={"name": "k"}, headers=AUTH)).json()["key"]
    made = await client.post(url + "/api/v1/users", json={"email": "u@example.com", "password": "correct horse 1"},
                             headers=AUTH)
    assert made.status_code == 201, made.text
    login = await client.post(url + "/api/v1/auth/login", json={"email": "u@example.com",
                                                                 "password": "correct horse 1"})
    session = login.json()["token"]
    bearer = {"Authorization": f"Bearer {key}"}
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

    async def requests() -> dict[str, httpx.Response]:
        return {
            "chat": await client.post(url + "/v1/chat/completions", json=chat, headers=bearer),
            "stream": await client.post(url + "/v1/chat/completions", json={**chat, "stream": True}, headers=bearer),
            "models": await client.get(url + "/v1/models", headers=bearer),
            "api": await client.get(url + "/api/v1/keys", headers=AUTH),
            "page": await client.get(url + "/me", headers={"Cookie": f"tt_session={session}"}),
        }

    before = await requests()
    assert {name: r.status_code for name, r in before.items()} == dict.fromkeys(before, 200)
    await asyncio.to_thread(pg.stop, "fast")
    try:
        down = await requests()
        ready = await client.get(url + "/ready")
    finally:
        await asyncio.to_thread(pg.start)
    for name in ("chat", "stream", "models", "api"):
        assert _database_unavailable(down[name]), (name, down[name].status_code, down[name].text)
    page = down["page"]
    assert page.status_code == 503 and int(page.headers["retry-after"]) >= 1
    assert page.headers["content-type"].startswith("text/html") and "database is unavailable" in page.text
    assert ready.status_code == 503 and ready.json()["checks"]["database"]["status"] == "error"
    after = await requests()  # the same server: its pool reconnected
    assert {name: r.status_code for name, r in after.items()} == dict.fromkeys(after, 200)
