"""Text no database can store never reaches one: a lone surrogate, as a JSON escape or as the bytes of one,
and bytes that are not UTF-8 are a 4xx in OpenAI's error shape on every route that takes text, and
nothing is written. A UnicodeEncodeError that escapes a route anyway is a 400, not a 500. Over HTTP, on
SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import Request
from fastapi.responses import JSONResponse

from thinktank.api.asgi import Receive, Scope, Send, send_json
from thinktank.config import Settings
from thinktank.knowledge.embeddings import LocalEmbedder
from thinktank.store.tables import Team

from .conftest import AUTH
from .test_threads import Env, make_env

BAD_TEXT = {
    "escaped high surrogate": b'"\\ud800"',
    "escaped low surrogate": b'"chef \\udfff"',
    "surrogate as UTF-8 bytes": b'"\xed\xa0\x80"',
    "not UTF-8": b'"caf\xe9"',
}
"""What stands for ``@@`` in the bodies below: each is a JSON string a database cannot store."""

ROUTES: list[tuple[str, str, str]] = [
    ("POST", "/api/v1/threads", '{"model": "gpt", "title": @@}'),
    ("PATCH", "/api/v1/threads/{thread}", '{"title": @@}'),
    ("POST", "/api/v1/threads/{thread}/messages", '{"content": @@}'),
    ("POST", "/api/v1/threads/import",
     '{"thread": {"model": "gpt", "title": "copy"}, "messages": [{"role": "user", "content": @@}]}'),
    ("POST", "/api/v1/personas", '{"name": @@, "system_prompt": "You cook."}'),
    ("PATCH", "/api/v1/personas/{persona}", '{"name": @@}'),
    ("POST", "/api/v1/knowledge-bases", '{"name": "recipes", "description": @@}'),
    ("POST", "/api/v1/knowledge-bases/{kb}/search", '{"query": @@}'),
    ("POST", "/api/v1/knowledge-bases/{kb}/documents", '{"documents": [{"name": "a.txt", "text": @@}]}'),
    ("POST", "/api/v1/keys", '{"name": @@}'),
    ("POST", "/api/v1/keys", '{"name": "ci", "metadata": {"owner": @@}}'),
    ("POST", "/api/v1/users", '{"email": "carol@example.com", "password": @@}'),
    ("POST", "/api/v1/teams", '{"name": @@}'),
    ("POST", "/api/v1/auth/login", '{"email": @@, "password": "whatever"}'),
    ("PATCH", "/api/v1/me/memory/{fact}", '{"text": @@}'),
    ("POST", "/api/v1/ensembles", '{"members": ["gpt"], "question": @@}'),
    ("POST", "/v1/chat/completions", '{"model": "gpt", "messages": [{"role": "user", "content": @@}]}'),
]
ADMIN_ONLY = ("/api/v1/users", "/api/v1/teams")


@pytest.fixture
async def env(settings: Settings, local_embedder: LocalEmbedder, db_url: str) -> AsyncIterator[Env]:
    async for e in make_env(settings.model_copy(update={"database_url": db_url}), local_embedder):
        yield e


async def _alice_with_one_of_everything(env: Env) -> tuple[dict[str, str], dict[str, str]]:
    """Alice's headers, and the ids of her thread, persona, knowledge base and learned fact."""
    _, alice = await env.user("alice@example.com")
    thread = await env.thread(alice, title="Dinner")
    env.script.extractions.append('{"memories": [{"kind": "fact", "text": "Lives in Lyon."}]}')
    assert (await env.say(alice, thread["id"], "I live in Lyon.")).status_code == 200
    await env.settled()
    persona = await env.http.post(env.url + "/api/v1/personas", headers=alice,
                                  json={"name": "chef", "system_prompt": "You cook."})
    kb = await env.http.post(env.url + "/api/v1/knowledge-bases", headers=alice, json={"name": "notes"})
    facts = await env.http.get(env.url + "/api/v1/me/memory", headers=alice)
    assert persona.status_code == 201 and kb.status_code == 201 and facts.status_code == 200
    ids = {"thread": thread["id"], "persona": persona.json()["id"], "kb": kb.json()["id"],
           "fact": facts.json()["data"][0]["id"]}
    return alice, ids


def _error(status: int, body: Any) -> dict[str, Any]:
    assert 400 <= status < 500, body
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err: dict[str, Any] = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], err
    return err


async def test_text_that_cannot_be_stored_is_refused_everywhere_and_nothing_is_written(env: Env) -> None:
    alice, ids = await _alice_with_one_of_everything(env)
    before, upstream_calls = await env.stored(), len(env.upstream.requests)
    failures: list[str] = []
    for method, path, template in ROUTES:
        headers = {**(AUTH if path in ADMIN_ONLY else alice), "content-type": "application/json"}
        for name, bad in BAD_TEXT.items():
            body = template.encode().replace(b"@@", bad)
            r = await env.http.request(method, env.url + path.format(**ids), headers=headers, content=body)
            if not 400 <= r.status_code < 500:
                failures.append(f"{method} {path} with {name}: {r.status_code} {r.text[:200]}")
                continue
            _error(r.status_code, r.json())
    assert failures == []
    assert await env.stored() == before
    assert len(env.upstream.requests) == upstream_calls


async def test_the_same_requests_with_valid_text_are_written(env: Env) -> None:
    """The refusals above are about the text alone: each body with ordinary text in its place passes."""
    alice, ids = await _alice_with_one_of_everything(env)
    for i, (method, path, template) in enumerate(ROUTES):
        if path in ("/api/v1/auth/login", "/api/v1/ensembles"):
            continue  # not a write (a login that fails is a 401); a run is covered by test_deliberation
        headers = {**(AUTH if path in ADMIN_ONLY else alice), "content-type": "application/json"}
        text = b'"caf\xc3\xa9 %d \\ud83c\\udf73"' % i  # UTF-8, and an escaped surrogate pair (an emoji)
        body = template.encode().replace(b"@@", text)
        r = await env.http.request(method, env.url + path.format(**ids), headers=headers, content=body)
        assert r.status_code in (200, 201), (method, path, r.text)


async def test_an_unencodable_string_escaping_a_route_is_a_400(env: Env) -> None:
    """The safety net: a route that writes text the database driver cannot encode (here one made for the
    test, as a route that forgot to validate would) answers 400 in OpenAI's shape, and writes nothing."""
    db = env.app.state.db

    async def write_team(request: Request) -> JSONResponse:
        async with db.session() as s:
            s.add(Team(id="team_x", name=(await request.body()).decode("utf-8", "surrogatepass"),
                       budget_period="month", created_at=1.0))
        return JSONResponse({}, 201)

    async def raw_write_team(scope: Scope, receive: Receive, send: Send) -> None:
        async with db.session() as s:
            s.add(Team(id="team_y", name="\ud800", budget_period="month", created_at=1.0))
        await send_json(send, 201, {})

    env.app.fastapi.add_api_route("/api/v1/test-only/teams", write_team, methods=["POST"])
    env.app._routes["/v1/test-only/teams"] = {"POST": raw_write_team}
    before = await env.stored()
    for path in ("/api/v1/test-only/teams", "/v1/test-only/teams"):
        r = await env.http.post(env.url + path, headers=AUTH, content=b"\xed\xa0\x80")
        err = _error(r.status_code, r.json())
        assert r.status_code == 400 and err["code"] == "invalid_unicode" and "Unicode" in err["message"], r.text
    assert await env.stored() == before


async def test_a_nul_character_is_refused_on_every_route_that_stores_text(env: Env) -> None:
    """``\\u0000`` is valid JSON, but PostgreSQL cannot store it in text: every ``/api`` route refuses it with a 400
    naming it (on SQLite too, so that the two behave alike), and nothing is written. The OpenAI endpoint, which
    stores no text of the request, passes it on."""
    alice, ids = await _alice_with_one_of_everything(env)
    before, upstream_calls = await env.stored(), len(env.upstream.requests)
    for method, path, template in ROUTES:
        if not path.startswith("/api/"):
            continue
        headers = {**(AUTH if path in ADMIN_ONLY else alice), "content-type": "application/json"}
        body = template.encode().replace(b"@@", b'"a\\u0000b"')
        r = await env.http.request(method, env.url + path.format(**ids), headers=headers, content=body)
        if path.endswith("/documents"):  # each document's own result: a NUL is binary data (415), not text
            assert r.status_code == 415 and r.json()["data"][0]["status"] == "failed", r.text
            continue
        err = _error(r.status_code, r.json())
        assert r.status_code == 400 and "NUL" in err["message"], (method, path, r.text)
    assert await env.stored() == before
    assert len(env.upstream.requests) == upstream_calls
    # An escaped backslash before "u0000" is not a NUL: it is stored as written.
    r = await env.http.post(env.url + "/api/v1/personas", headers=alice,
                            json={"name": "slash", "system_prompt": "a\\u0000b"})
    assert r.status_code == 201, r.text
    chat = await env.http.post(env.url + "/v1/chat/completions", headers=alice,
                               json={"model": "gpt", "messages": [{"role": "user", "content": "a\u0000b"}]})
    assert chat.status_code == 200, chat.text


async def test_a_nul_character_escaping_a_route_is_a_400_on_postgresql(env: Env) -> None:
    """The safety net for a NUL that reaches PostgreSQL by a way the JSON guard does not see (a web form, say): the
    database's refusal is the client's 400, not a 500, and nothing is written. SQLite stores it."""
    db = env.app.state.db

    async def write_team(request: Request) -> JSONResponse:
        async with db.session() as s:
            s.add(Team(id="team_nul", name=(await request.body()).decode(), budget_period="month", created_at=1.0))
        return JSONResponse({}, 201)

    env.app.fastapi.add_api_route("/api/v1/test-only/nul-teams", write_team, methods=["POST"])
    before = await env.stored()
    r = await env.http.post(env.url + "/api/v1/test-only/nul-teams", headers=AUTH, content=b"a\x00b")
    if db.dialect == "postgresql":
        err = _error(r.status_code, r.json())
        assert r.status_code == 400 and err["code"] == "invalid_text" and "NUL" in err["message"], r.text
        assert await env.stored() == before
    else:
        assert r.status_code == 201, r.text
