"""Every number a request carries has a range: one beyond what its column holds (2**63 on SQLite, 2**31 in a
PostgreSQL ``integer``), what a JSON client reads exactly, or what the code can compute with (inf, NaN,
1e308, a date past 9999) is refused when the request is validated — 422 on the /api routes, 400 on the
OpenAI ones and for a run's configuration — and nothing is written. Values up to the ranges are stored
and read back exactly. Over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from thinktank.bounds import MAX_SAFE_INT, MAX_UNIX_TIME
from thinktank.config import Settings
from thinktank.knowledge.embeddings import LocalEmbedder

from .apps import PASSWORD
from .conftest import AUTH
from .test_threads import Env, make_env

CAROL = {"email": "carol@example.com", "password": PASSWORD}
RUN = {"members": ["gpt"], "question": "Tea or coffee?"}
CHAT = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}
ADMIN_ONLY = ("/api/v1/users", "/api/v1/teams")


def imported(usage: dict[str, int] | None = None, summaries: list[dict[str, Any]] | None = None,
             **message: Any) -> dict[str, Any]:
    """A thread to import whose assistant message carries ``usage`` and ``message``'s fields."""
    reply = {"role": "assistant", "content": "Tea.", "model": "gpt", **message}
    if usage is not None:
        reply["usage"] = usage
    return {"format": "thinktank.thread", "version": 1, "thread": {"model": "gpt", "title": "Imported"},
            "messages": [{"role": "user", "content": "Tea or coffee?"}, reply], "summaries": summaries or []}


REFUSED: list[tuple[str, str, dict[str, Any] | bytes | None, int, str]] = [
    # keys, users, teams: rate limits, budgets, expiry, metadata
    ("POST", "/api/v1/keys", {"rpm": 2**63}, 422, "rpm"),
    ("POST", "/api/v1/keys", {"tpm": 2**63}, 422, "tpm"),
    ("POST", "/api/v1/keys", {"tpm": 2**53}, 422, "tpm"),
    ("POST", "/api/v1/keys", {"rpm": 2**64}, 422, "rpm"),
    ("POST", "/api/v1/keys", {"budget_usd": 1e308}, 422, "budget_usd"),
    ("POST", "/api/v1/keys", b'{"budget_usd": 1e400}', 422, "not valid JSON"),
    ("POST", "/api/v1/keys", b'{"budget_usd": NaN}', 422, "not valid JSON"),
    ("POST", "/api/v1/keys", b'{"budget_usd": -Infinity}', 422, "not valid JSON"),
    ("POST", "/api/v1/keys", {"expires_at": 1e300}, 422, "expires_at"),
    ("POST", "/api/v1/keys", {"metadata": {"build": 2**60}}, 422, "metadata"),
    ("POST", "/api/v1/users", {**CAROL, "rpm": 2**63}, 422, "rpm"),
    ("POST", "/api/v1/users", {**CAROL, "tpm": 2**63}, 422, "tpm"),
    ("POST", "/api/v1/users", {**CAROL, "budget_usd": 1e13}, 422, "budget_usd"),
    ("POST", "/api/v1/teams", {"name": "big", "budget_usd": 1e300}, 422, "budget_usd"),
    # a thread's import: tokens, cost, times, positions
    ("POST", "/api/v1/threads/import", imported(usage={"prompt_tokens": 2**63}), 422, "prompt_tokens"),
    ("POST", "/api/v1/threads/import", imported(usage={"completion_tokens": 2**53}), 422, "completion_tokens"),
    ("POST", "/api/v1/threads/import", imported(cost_usd=1e300), 422, "cost_usd"),
    ("POST", "/api/v1/threads/import", imported(created_at=1e300), 422, "created_at"),
    ("POST", "/api/v1/threads/import", imported(seq=2**31), 422, "seq"),
    ("POST", "/api/v1/threads/import", imported(summaries=[{"through_seq": 2**40, "content": "x"}]), 422,
     "through_seq"),
    # a turn, a run, and a run's configuration (checked with the configuration: 400, as before)
    ("POST", "/api/v1/threads/{thread}/messages", {"content": "hi", "max_tokens": 2**63}, 422, "max_tokens"),
    ("POST", "/api/v1/threads/{thread}/messages", b'{"content": "hi", "temperature": NaN}', 422, "not valid JSON"),
    ("POST", "/api/v1/ensembles", {**RUN, "max_tokens": 2**31}, 422, "max_tokens"),
    ("POST", "/api/v1/ensembles", {**RUN, "max_cost_usd": 1e300}, 422, "max_cost_usd"),
    ("POST", "/api/v1/ensembles", {**RUN, "top_k": 2**63}, 400, "top_k"),
    ("POST", "/api/v1/ensembles", {**RUN, "member_timeout": 1e308}, 400, "member_timeout"),
    ("POST", "/api/v1/ensembles", {**RUN, "weights": {"relevance": 1e300}}, 400, "weights"),
    ("POST", "/api/v1/debates", {"models": ["gpt"], "question": "q", "rounds": 2**63}, 400, "rounds"),
    ("POST", "/api/v1/debates", {"models": ["gpt"], "question": "q", "experts": 2**63}, 400, "experts"),
    ("POST", "/api/v1/debates", {"models": ["gpt"], "question": "q", "convergence": 1e300}, 400, "convergence"),
    # knowledge
    ("POST", "/api/v1/knowledge-bases/{kb}/search", {"query": "tea", "filters": {"pages": [1, 2**40]}}, 422, "pages"),
    ("POST", "/api/v1/knowledge-bases/{kb}/search", {"query": "tea", "keyword_weight": 1e300}, 422, "keyword_weight"),
    ("POST", "/api/v1/knowledge-bases/{kb}/search", {"query": "tea", "top_k": 2**63}, 400, "top_k"),
    ("POST", "/api/v1/knowledge-bases", {"name": "big", "chunk_tokens": 2**63}, 400, "chunk_tokens"),
    ("DELETE", f"/api/v1/knowledge-bases/{{kb}}/shares/{2**63}", None, 422, "share_id"),
    # numbers in the query string
    ("GET", "/api/v1/usage?start=inf", None, 422, "start"),
    ("GET", "/api/v1/usage?end=1e400", None, 422, "end"),
    ("GET", "/api/v1/usage?start=nan", None, 422, "start"),
    ("GET", "/api/v1/threads?before=nan", None, 422, "before"),
    ("GET", "/api/v1/runs?before=-inf", None, 422, "before"),
    ("GET", f"/api/v1/threads/{{thread}}/messages?after={2**63}", None, 422, "after"),
    # the OpenAI endpoints answer 400, as for every other malformed body
    ("POST", "/v1/chat/completions", {**CHAT, "max_tokens": 2**63}, 400, "max_tokens"),
    ("POST", "/v1/chat/completions", {**CHAT, "max_completion_tokens": 2**31}, 400, "max_completion_tokens"),
    ("POST", "/v1/chat/completions", {**CHAT, "seed": 2**64}, 400, "seed"),
    ("POST", "/v1/chat/completions", orjson.dumps(CHAT)[:-1] + b', "temperature": 1e400}', 400, "not valid JSON"),
    ("POST", "/v1/embeddings", {"model": "gpt", "input": "tea", "dimensions": 2**31}, 400, "dimensions"),
    ("POST", "/v1/embeddings", {"model": "gpt", "input": [2**40]}, 400, "token ids"),
]


@pytest.fixture
async def env(settings: Settings, local_embedder: LocalEmbedder, db_url: str) -> AsyncIterator[Env]:
    async for e in make_env(settings.model_copy(update={"database_url": db_url}), local_embedder):
        yield e


async def test_numbers_out_of_range_are_refused_and_nothing_is_written(env: Env) -> None:
    _, alice = await env.user("alice@example.com")
    thread = await env.thread(alice)
    kb = await env.http.post(env.url + "/api/v1/knowledge-bases", headers=alice, json={"name": "notes"})
    assert kb.status_code == 201
    ids = {"thread": thread["id"], "kb": kb.json()["id"]}
    before = await env.stored()
    wrong: list[str] = []
    for method, path, body, status, names in REFUSED:
        headers = {**(AUTH if path in ADMIN_ONLY else alice), "content-type": "application/json"}
        content = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
        r = await env.http.request(method, env.url + path.format(**ids), headers=headers, content=content)
        err = r.json().get("error") if r.headers.get("content-type") == "application/json" else None
        shaped = isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}
        if (r.status_code, shaped) != (status, True):
            wrong.append(f"{method} {path} {body!r:.80}: {r.status_code} {r.text[:200]}")
        elif isinstance(err, dict) and names.lower() not in err["message"].lower():
            wrong.append(f"{method} {path} {body!r:.80}: the message does not name {names!r}: {err['message']}")
    assert wrong == [], "\n".join(wrong)
    assert await env.stored() == before
    assert env.upstream.requests == []


async def test_an_event_number_out_of_range_is_refused(env: Env) -> None:
    run = await env.http.post(env.url + "/api/v1/ensembles", headers=AUTH, json=RUN)
    assert run.status_code == 200, run.text
    events = env.url + f"/api/v1/runs/{run.json()['id']}/events?format=json"
    assert (await env.http.get(events, headers={**AUTH, "Last-Event-ID": "1"})).status_code == 200
    for last_event_id in (b"9" * 30, b"4294967296", "\u00b2".encode("latin-1"), b"1e3"):
        headers = {k.encode(): v.encode() for k, v in AUTH.items()} | {b"last-event-id": last_event_id}
        r = await env.http.get(events, headers=headers)
        assert r.status_code == 400 and r.json()["error"]["param"] == "Last-Event-ID", (last_event_id, r.text)
    r = await env.http.get(events + f"&after={2**63}", headers=AUTH)
    assert r.status_code == 422 and "after" in r.json()["error"]["message"], r.text


@pytest.mark.parametrize(("path", "body"), [
    ("/api/v1/keys", {"name": "fast", "rpm": 2**31, "tpm": MAX_SAFE_INT}),
    ("/api/v1/users", {"email": "dave@example.com", "password": PASSWORD, "rpm": 2**31 + 7, "tpm": 10**12,
                       "budget_usd": 1e12}),
])
async def test_large_limits_are_stored_and_read_back(env: Env, path: str, body: dict[str, Any]) -> None:
    r = await env.http.post(env.url + path, headers=AUTH, json=body)
    assert r.status_code == 201, r.text
    again = await env.http.get(env.url + f"{path}/{r.json()['id']}", headers=AUTH)
    assert again.status_code == 200
    assert {k: again.json()[k] for k in body if k not in ("password", "email")} == {
        k: v for k, v in body.items() if k not in ("password", "email")}


async def test_an_import_with_large_token_counts_round_trips(env: Env) -> None:
    _, alice = await env.user("alice@example.com")
    usage = {"prompt_tokens": 2**40, "completion_tokens": 2**33 + 1}
    data = imported(usage=usage, cost_usd=123456.5, created_at=MAX_UNIX_TIME)
    r = await env.http.post(env.url + "/api/v1/threads/import", headers=alice, json=data)
    assert r.status_code == 201, r.text
    url = env.url + f"/api/v1/threads/{r.json()['thread']['id']}/export"
    exported = (await env.http.get(url, headers=alice)).json()
    reply = exported["messages"][1]
    assert {k: reply["usage"][k] for k in usage} == usage
    assert (reply["cost_usd"], reply["created_at"]) == (123456.5, MAX_UNIX_TIME)
    md = await env.http.get(url + "?format=markdown", headers=alice)
    assert md.status_code == 200 and "9999-12-31 23:59:59 UTC" in md.text and f"{2**40} + {2**33 + 1} tokens" in md.text
