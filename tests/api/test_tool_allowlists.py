"""Agent tool allowlists over HTTP: ``tools`` on ``POST /api/v1/users`` and ``POST /api/v1/keys``, read back from
every route that shows a user or a key and from ``/api/v1/me``; ``PUT /api/v1/users/{id}/tools`` (admin) seen at
once by the user's cached sessions and keys; a key never wider than its creator; bad values a 4xx that says
what is wrong, never a 500. On SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .conftest import AUTH, Start

PASSWORD = "correct horse battery staple"
CONFIG: dict[str, Any] = {"models": [{"name": "m", "provider": "mock"}]}


@pytest.fixture
async def api(gateway: Start, db_url: str) -> str:
    return str(await gateway(CONFIG, database_url=db_url))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def member(c: httpx.AsyncClient, api: str, email: str, **extra: Any) -> tuple[str, dict[str, str]]:
    r = await c.post(api + "/api/v1/users", headers=AUTH, json={"email": email, "password": PASSWORD, **extra})
    assert r.status_code == 201, r.text
    login = await c.post(api + "/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    return r.json()["id"], bearer(login.json()["token"])


async def test_tools_round_trip_through_users_keys_and_me(api: str, client: httpx.AsyncClient) -> None:
    uid, session = await member(client, api, "ann@example.com", tools=["git", "knowledge_search", "search.find"])
    for url in (f"/api/v1/users/{uid}",):
        assert (await client.get(api + url, headers=AUTH)).json()["tools"] == ["git", "knowledge_search",
                                                                                 "search.find"]
    listed = {u["id"]: u for u in (await client.get(api + "/api/v1/users", headers=AUTH)).json()}
    assert listed[uid]["tools"] == ["git", "knowledge_search", "search.find"]
    me = (await client.get(api + "/api/v1/me", headers=session)).json()
    assert me["tools"] == ["git", "knowledge_search", "search.find"] and me["user"]["tools"] == me["tools"]

    r = await client.post(api + "/api/v1/keys", headers=session, json={"name": "agents", "tools": ["git.git_log"]})
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["tools"] == ["git.git_log"]
    assert (await client.get(api + f"/api/v1/keys/{made['id']}", headers=session)).json()["tools"] == ["git.git_log"]
    assert [k["tools"] for k in (await client.get(api + "/api/v1/keys", headers=session)).json()] == [["git.git_log"]]
    assert (await client.get(api + "/api/v1/me", headers=bearer(made["key"]))).json()["tools"] == ["git.git_log"]

    inherited = (await client.post(api + "/api/v1/keys", headers=session, json={})).json()
    assert inherited["tools"] == ["git", "knowledge_search", "search.find"]
    rotated = await client.post(api + f"/api/v1/keys/{made['id']}/rotate", headers=session)
    assert rotated.json()["tools"] == ["git.git_log"]
    revoked = await client.delete(api + f"/api/v1/keys/{made['id']}", headers=session)
    assert revoked.json()["tools"] == ["git.git_log"]

    # Without a list: every tool (null), for the user and their keys.
    _, open_session = await member(client, api, "open@example.com")
    assert (await client.get(api + "/api/v1/me", headers=open_session)).json()["tools"] is None
    key = (await client.post(api + "/api/v1/keys", headers=open_session, json={"tools": None})).json()
    assert key["tools"] is None
    none = (await client.post(api + "/api/v1/keys", headers=open_session, json={"tools": []})).json()
    assert none["tools"] == [] and (await client.get(api + "/api/v1/me", headers=bearer(none["key"]))).json()[
        "tools"] == []


async def test_a_key_cannot_widen_its_creators_list(api: str, client: httpx.AsyncClient) -> None:
    _, session = await member(client, api, "bob@example.com", tools=["git", "knowledge_search"])
    for wider in (["fetch_url"], ["git.git_log", "search"], ["search.*"], ["gitlab.issues"]):
        r = await client.post(api + "/api/v1/keys", headers=session, json={"tools": wider})
        assert r.status_code == 403, r.text
        error = r.json()["error"]
        assert error["param"] == "tools" and wider[-1] in error["message"]
        assert "creator may not use" in error["message"]
    assert (await client.get(api + "/api/v1/keys", headers=session)).json() == []
    # A key made by a key stays within that key's list.
    narrow = (await client.post(api + "/api/v1/keys", headers=session, json={"tools": ["git.*"]})).json()
    r = await client.post(api + "/api/v1/keys", headers=bearer(narrow["key"]), json={"tools": ["knowledge_search"]})
    assert r.status_code == 403 and "knowledge_search" in r.json()["error"]["message"]
    r = await client.post(api + "/api/v1/keys", headers=bearer(narrow["key"]), json={"tools": ["git.git_log"]})
    assert (r.status_code, r.json()["tools"]) == (201, ["git.git_log"])


async def test_an_admin_sets_a_users_tools_and_their_keys_see_it_at_once(api: str, client: httpx.AsyncClient) -> None:
    uid, session = await member(client, api, "cat@example.com")
    key = (await client.post(api + "/api/v1/keys", headers=session, json={"tools": ["git", "fetch_url"]})).json()
    as_key = bearer(key["key"])
    assert (await client.get(api + "/api/v1/me", headers=as_key)).json()["tools"] == ["fetch_url", "git"]

    r = await client.put(api + f"/api/v1/users/{uid}/tools", headers=AUTH, json={"tools": ["git.git_log"]})
    assert (r.status_code, r.json()["tools"]) == (200, ["git.git_log"])
    assert (await client.get(api + f"/api/v1/users/{uid}", headers=AUTH)).json()["tools"] == ["git.git_log"]
    # The key (cached by the requests above) and the session see the change without waiting.
    assert (await client.get(api + "/api/v1/me", headers=as_key)).json()["tools"] == ["git.git_log"]
    assert (await client.get(api + "/api/v1/me", headers=session)).json()["tools"] == ["git.git_log"]
    assert (await client.get(api + f"/api/v1/keys/{key['id']}", headers=session)).json()["tools"] == [
        "git", "fetch_url"]  # the key keeps its own list; the user's bounds it

    r = await client.put(api + f"/api/v1/users/{uid}/tools", headers=AUTH, json={"tools": []})
    assert r.json()["tools"] == []
    assert (await client.get(api + "/api/v1/me", headers=as_key)).json()["tools"] == []
    r = await client.put(api + f"/api/v1/users/{uid}/tools", headers=AUTH, json={"tools": None})
    assert r.json()["tools"] is None
    assert (await client.get(api + "/api/v1/me", headers=as_key)).json()["tools"] == ["fetch_url", "git"]

    # Admins only; an unknown user is 404; nothing else may ride along.
    r = await client.put(api + f"/api/v1/users/{uid}/tools", headers=session, json={"tools": None})
    assert r.status_code == 403
    r = await client.put(api + "/api/v1/users/usr_nobody/tools", headers=AUTH, json={"tools": ["git"]})
    assert r.status_code == 404
    r = await client.put(api + f"/api/v1/users/{uid}/tools", headers=AUTH, json={"tools": None, "role": "admin"})
    assert r.status_code == 422
    r = await client.put(api + f"/api/v1/users/{uid}/tools", headers=AUTH, json={})
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("body.tools: ")
    assert (await client.get(api + f"/api/v1/users/{uid}", headers=AUTH)).json()["role"] == "member"


BAD_TOOLS: list[tuple[str, object, str]] = [
    ("not a list", "git", "valid list"),
    ("an object", {"git": True}, "valid list"),
    ("a number", 7, "valid list"),
    ("numbers", [1, 2], "valid string"),
    ("null inside", [None], "valid string"),
    ("nested", [["git"]], "valid string"),
    ("empty name", [""], "at least 1 character"),
    ("long name", ["g" * 201], "at most 200 characters"),
    ("huge name", ["g" * 200_000], "at most 200 characters"),
    ("too many", [f"server{i}" for i in range(101)], "at most 100 items"),
    ("a lone star", ["*"], "server.*"),
    ("a star inside", ["git.log*"], "server.*"),
    ("a dangling dot", ["git."], "server.tool"),
    ("a space", ["git log"], "letters, digits"),
    ("markup", ["<script>"], "letters, digits"),
    ("non-ASCII", ["gït"], "letters, digits"),
    ("a comma", ["git,fetch_url"], "letters, digits"),
]


@pytest.mark.parametrize(("what", "tools", "says"), BAD_TOOLS, ids=[b[0] for b in BAD_TOOLS])
async def test_bad_tool_lists_are_client_errors(api: str, client: httpx.AsyncClient, what: str, tools: object,
                                                says: str) -> None:
    uid, session = await member(client, api, "dan@example.com")
    attempts = [
        ("POST", "/api/v1/keys", session, {"tools": tools}),
        ("POST", "/api/v1/users", AUTH, {"email": "eve@example.com", "password": PASSWORD, "tools": tools}),
        ("PUT", f"/api/v1/users/{uid}/tools", AUTH, {"tools": tools}),
    ]
    for method, url, headers, body in attempts:
        r = await client.request(method, api + url, headers=headers, json=body)
        assert r.status_code == 422, (what, url, r.text)
        message = r.json()["error"]["message"]
        assert message.startswith("body.tools") and says in message, (what, url, message)
        assert len(message) < 400  # the value is not echoed
    assert (await client.get(api + "/api/v1/keys", headers=session)).json() == []
    assert (await client.get(api + f"/api/v1/users/{uid}", headers=AUTH)).json()["tools"] is None
    assert "eve@example.com" not in [u["email"] for u in (await client.get(api + "/api/v1/users", headers=AUTH)).json()]


@pytest.mark.parametrize("raw", [b'{"tools": ["git\\ud800"]}', b'{"tools": ["git\xed\xa0\x80"]}',
                                 b'{"tools": ["\\udfff"]}', b'{"tools": ["git"'])
async def test_lone_surrogates_and_broken_json_are_client_errors(api: str, client: httpx.AsyncClient,
                                                                 raw: bytes) -> None:
    uid, session = await member(client, api, "fay@example.com")
    for method, url, headers in (("POST", "/api/v1/keys", session), ("PUT", f"/api/v1/users/{uid}/tools", AUTH)):
        r = await client.request(method, api + url, content=raw,
                                 headers={**headers, "content-type": "application/json"})
        assert r.status_code == 422, r.text
        assert "not valid JSON" in r.json()["error"]["message"]
    assert (await client.get(api + f"/api/v1/users/{uid}", headers=AUTH)).json()["tools"] is None
