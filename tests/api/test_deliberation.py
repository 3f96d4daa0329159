"""Ensembles and debates over HTTP: members on a real fake upstream (OpenAI wire format) and mocks,
runs persisted on SQLite and PostgreSQL, events over SSE with reconnection, cancel, budgets,
cache, feedback, arena and leaderboard, and every kind of bad input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from ..fakes.openai import completion, stream_events
from ..fakes.upstream import FakeUpstream, Recorded, Reply
from .conftest import AUTH, Start
from .test_accounts import bearer, make_user

ANSWERS = {
    "alpha": "Use PostgreSQL.\n\n- reliable\n- well known\n\nIt scales for years.",
    "beta": "SQLite is enough for a prototype; move later.",
    "gamma": "A document store, because schemas change.",
}


def upstream_handler(rec: Recorded) -> Reply:
    """Each upstream model answers in its own way; judges follow the prompt they are given."""
    body = rec.json if isinstance(rec.json, dict) else {}
    model = str(body.get("model"))
    prompt = "\n".join(str(m.get("content")) for m in body.get("messages", []))
    if model == "broken":
        return Reply(status=200, body=b"<html>not json</html>", headers={"content-type": "text/html"})
    if model == "down":
        return Reply(status=500, json={"error": {"message": "upstream is down"}})
    if "FINAL RANKING:" in prompt:
        # A reviewer that ranks the PostgreSQL answer first, whatever label it got.
        labels = [line.split()[1].rstrip(":") for line in prompt.splitlines() if line.startswith("Response ")]
        first = [lb for lb in labels if f"Response {lb}:\n<<<\nUse PostgreSQL" in prompt]
        order = first + [lb for lb in labels if lb not in first]
        text = "Reviewed.\nFINAL RANKING:\n" + "\n".join(f"{i + 1}. Response {lb}" for i, lb in enumerate(order))
    elif "Several anonymous experts answered" in prompt:
        text = "Fused: use PostgreSQL, start simple."
    else:
        text = ANSWERS.get(model, f"answer from {model}")
    if body.get("stream"):
        words = text.split(" ")
        return Reply(sse=stream_events([w if i == 0 else " " + w for i, w in enumerate(words)]))
    return Reply(json=completion(text, model=model, prompt_tokens=100, completion_tokens=50))


def config(url: str, **ensemble: Any) -> dict[str, Any]:
    def model(name: str) -> dict[str, Any]:
        return {"name": name, "provider": "openai", "base_url": url + "/v1", "api_key": "sk-x",
                "input_price": 10, "output_price": 20}

    return {
        "models": [model("alpha"), model("beta"), model("gamma"), model("broken"), model("down"),
                   {"name": "slow", "provider": "mock", "options": {"latency": 30, "replies": ["late"]}},
                   {"name": "snail", "provider": "mock", "options": {"latency": 0.4, "replies": ["slow but sure"]}}],
        "router": {"num_retries": 0},
        "ensembles": [
            {"name": "council", "members": ["alpha", "beta", "gamma"], "chairman": "alpha", **ensemble},
            {"name": "partly-broken", "members": ["alpha", "broken", "down"], "strategy": "heuristic"},
            {"name": "all-broken", "members": ["broken", "down"], "strategy": "heuristic"},
            {"name": "waits", "members": ["alpha", "slow"], "strategy": "heuristic"},
            {"name": "pair", "members": ["alpha", "beta"], "strategy": "heuristic"},
            {"name": "slowish", "members": ["alpha", "snail"], "strategy": "heuristic"},
        ],
        "debates": [{"name": "panel", "models": ["alpha", "beta"], "rounds": 2}],
    }


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream(upstream_handler)
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def api(gateway: Start, upstream: FakeUpstream, db_url: str) -> str:
    return str(await gateway(config(upstream.url), database_url=db_url))


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    event: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if line.startswith("id: "):
            event["id"] = int(line[4:])
        elif line.startswith("event: "):
            event["event"] = line[7:]
        elif line.startswith("data: "):
            event["data"] = orjson.loads(line[6:])
        elif line == "" and event:
            yield event
            event = {}


async def test_ensemble_run_is_recorded_and_readable(api: str, client: httpx.AsyncClient) -> None:
    r = await client.post(api + "/api/v1/ensembles", headers=AUTH, json={"ensemble": "council", "question": "DB?"})
    assert r.status_code == 200, r.text
    run = r.json()
    assert r.headers["x-thinktank-run-id"] == run["id"]
    assert run["status"] == "completed" and run["kind"] == "ensemble"
    result = run["result"]
    # peer review: the reviewers (the members) all put the PostgreSQL answer (alpha = A) first
    assert result["ranking"]["strategy"] == "peer_review"
    assert result["ranking"]["order"][0] == "A"
    assert result["ranking"]["rankings"]["B"][0] == "A" and result["ranking"]["rankings"]["C"][0] == "A"
    # three reviewers never rank two answers in common: agreement is measured against the consensus
    assert result["ranking"]["agreement_method"] == "with the consensus"
    assert result["ranking"]["agreement"] == 1.0
    assert result["answer"] == "Fused: use PostgreSQL, start simple."
    stages = [c["stage"] for c in run["calls"]]
    assert stages.count("answer") == 3 and stages.count("rank") == 3 and stages.count("synthesis") == 1
    # cost from the router's accounting: 100 in at $10/M + 50 out at $20/M per call (synthesis streams: estimated)
    answer_costs = [c["cost_usd"] for c in run["calls"] if c["stage"] == "answer"]
    assert answer_costs == [pytest.approx(0.002)] * 3
    assert run["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in run["calls"]))
    assert run["cost_by_stage"]["answer"] == pytest.approx(0.006)
    stored = (await client.get(api + f"/api/v1/runs/{run['id']}", headers=AUTH)).json()
    assert stored["status"] == "completed" and stored["result"] == result
    assert [c["answer"] for c in stored["calls"]] == [c["answer"] for c in run["calls"]]
    listed = (await client.get(api + "/api/v1/runs", headers=AUTH)).json()["data"]
    assert [x["id"] for x in listed] == [run["id"]]
    usage = (await client.get(api + "/api/v1/usage?group_by=model", headers=AUTH)).json()["data"]
    assert any(u["group"] == "ensemble/council" and u["cost_usd"] == pytest.approx(run["cost_usd"]) for u in usage)


async def test_events_stream_and_reconnect_with_last_event_id(api: str, client: httpx.AsyncClient) -> None:
    body = {"ensemble": "pair", "members": ["alpha", "snail"], "question": "DB?", "stream": True}
    seen: list[dict[str, Any]] = []
    async with client.stream("POST", api + "/api/v1/ensembles", headers=AUTH, json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        run_id = r.headers["x-thinktank-run-id"]
        async for event in sse_events(r):
            seen.append(event)
            if event["event"] == "model_answered":
                break  # the client goes away while the run goes on (snail is still answering)
    last = seen[-1]["id"]
    headers = {**AUTH, "Last-Event-ID": str(last)}
    async with client.stream("GET", api + f"/api/v1/runs/{run_id}/events", headers=headers) as r:
        rest = [e async for e in sse_events(r)]
    ids = [e["id"] for e in seen + rest]
    assert ids == list(range(1, len(ids) + 1)), "no event lost or repeated"
    assert rest[-1]["event"] == "done" and rest[-1]["data"]["status"] == "completed"
    replay = (await client.get(api + f"/api/v1/runs/{run_id}/events?format=json", headers=AUTH)).json()["data"]
    assert [e["seq"] for e in replay] == ids
    assert [e["type"] for e in replay][:2] == ["run_started", "stage_started"]
    assert {e["type"] for e in replay} >= {"model_answered", "ranking", "synthesis_token", "cost", "done"}
    bad = await client.get(api + f"/api/v1/runs/{run_id}/events", headers={**AUTH, "Last-Event-ID": "x"})
    assert bad.status_code == 400


async def test_partial_failure_and_total_failure(api: str, client: httpx.AsyncClient) -> None:
    r = await client.post(api + "/api/v1/ensembles", headers=AUTH, json={"ensemble": "partly-broken", "question": "q"})
    assert r.status_code == 200
    result = r.json()["result"]
    assert [a["model"] for a in result["answers"]] == ["alpha"]
    failed = {f["model"]: f["error"] for f in result["failed"]}
    assert set(failed) == {"broken", "down"}
    assert "upstream is down" in failed["down"] and failed["broken"]
    r = await client.post(api + "/api/v1/ensembles", headers=AUTH, json={"ensemble": "all-broken", "question": "q"})
    assert r.status_code == 502
    err = r.json()
    assert err["error"]["code"] == "run_failed" and "broken" in err["error"]["message"]
    assert "down" in err["error"]["message"]
    kept = (await client.get(api + f"/api/v1/runs/{err['run']['id']}", headers=AUTH)).json()
    assert kept["status"] == "failed" and len(kept["result"]["failed"]) == 2
    assert all(c["error"] for c in kept["calls"])


async def test_cancel_keeps_what_was_done(api: str, client: httpx.AsyncClient) -> None:
    async with client.stream("POST", api + "/api/v1/ensembles", headers=AUTH,
                             json={"ensemble": "waits", "question": "q", "stream": True}) as r:
        run_id = r.headers["x-thinktank-run-id"]
        async for event in sse_events(r):
            if event["event"] == "model_answered":  # alpha answered; slow takes 30 s
                c = await client.post(api + f"/api/v1/runs/{run_id}/cancel", headers=AUTH)
                assert c.status_code == 202 and c.json()["status"] == "cancelled"
            if event["event"] == "done":
                assert event["data"]["status"] == "cancelled"
                break
    run = (await client.get(api + f"/api/v1/runs/{run_id}", headers=AUTH)).json()
    assert run["status"] == "cancelled"
    assert [c["answer"] for c in run["calls"] if c["model"] == "alpha"] == [ANSWERS["alpha"]]
    again = await client.post(api + f"/api/v1/runs/{run_id}/cancel", headers=AUTH)
    assert again.status_code == 409


async def test_budget_stops_the_run_cleanly(api: str, client: httpx.AsyncClient) -> None:
    # The three answers cost $0.002 each; a review's worst case (its prompt x1.5 and 1024 tokens out at
    # $20/M) does not fit in what is left of $0.007, so the run stops before the ranking.
    r = await client.post(api + "/api/v1/ensembles", headers=AUTH,
                          json={"ensemble": "council", "question": "q", "max_cost_usd": 0.007, "max_tokens": 50})
    assert r.status_code == 429, r.text
    assert r.headers["retry-after"] == "1"  # every 429 says when to try again
    err = r.json()
    assert err["error"]["code"] == "budget_exceeded"
    run = err["run"]
    assert run["status"] == "budget_exceeded" and run["cost_usd"] == pytest.approx(0.006)
    assert run["result"]["partial"] is True and len(run["result"]["answers"]) == 3  # the answers are kept
    assert not [c for c in run["calls"] if c["stage"] == "rank" and c["answer"]]


async def test_user_budget_applies_to_the_whole_run(api: str, client: httpx.AsyncClient) -> None:
    # The answers ($0.006) fit in the user's $0.007; the reviews' worst case does not.
    _, token = await make_user(client, api, "dora@example.com", budget_usd=0.007)
    r = await client.post(api + "/api/v1/ensembles", headers=bearer(token),
                          json={"ensemble": "council", "question": "q", "max_tokens": 50})
    assert r.status_code == 429
    run = r.json()["run"]
    assert run["status"] == "budget_exceeded"
    assert run["cost_usd"] == pytest.approx(0.006) and len(run["result"]["answers"]) == 3
    assert "Budget exceeded" in r.json()["error"]["message"]


async def test_cache_serves_identical_requests_at_zero_cost(api: str, client: httpx.AsyncClient,
                                                            upstream: FakeUpstream) -> None:
    body = {"ensemble": "pair", "question": "cache me", "cache": True}
    first = (await client.post(api + "/api/v1/ensembles", headers=AUTH, json=body)).json()
    calls = len(upstream.requests)
    second = (await client.post(api + "/api/v1/ensembles", headers=AUTH, json=body)).json()
    assert len(upstream.requests) == calls, "no upstream call for a cache hit"
    assert second["cached_from"] == first["id"] and second["cost_usd"] == 0
    assert second["result"]["answer"] == first["result"]["answer"]
    # not allowed -> not served from the cache
    third = (await client.post(api + "/api/v1/ensembles", headers=AUTH, json={**body, "cache": False})).json()
    assert third["cached_from"] is None and len(upstream.requests) > calls
    # through the OpenAI endpoint, with the header
    chat = {"model": "ensemble/pair", "messages": [{"role": "user", "content": "cache me too"}]}
    a = await client.post(api + "/v1/chat/completions", headers={**AUTH, "x-thinktank-cache": "allow"}, json=chat)
    b = await client.post(api + "/v1/chat/completions", headers={**AUTH, "x-thinktank-cache": "allow"}, json=chat)
    assert a.status_code == b.status_code == 200
    assert float(b.headers["x-thinktank-cost-usd"]) == 0 and float(a.headers["x-thinktank-cost-usd"]) > 0
    hits = (await client.get(api + f"/api/v1/runs/{b.headers['x-thinktank-run-id']}", headers=AUTH)).json()
    assert hits["cached_from"] == a.headers["x-thinktank-run-id"]


async def test_openai_endpoint_serves_ensembles_and_debates(api: str, client: httpx.AsyncClient) -> None:
    models = [m["id"] for m in (await client.get(api + "/v1/models", headers=AUTH)).json()["data"]]
    assert {"ensemble/council", "debate/panel"} <= set(models)
    chat = {"model": "ensemble/council", "messages": [{"role": "user", "content": "DB?"}]}
    r = await client.post(api + "/v1/chat/completions", headers=AUTH, json=chat)
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "Fused: use PostgreSQL, start simple."
    assert r.json()["usage"]["cost"] > 0
    run_id = r.headers["x-thinktank-run-id"]
    assert (await client.get(api + f"/api/v1/runs/{run_id}", headers=AUTH)).json()["status"] == "completed"
    # streamed: the synthesis arrives as chunks, then usage, then [DONE]
    stream = {**chat, "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", api + "/v1/chat/completions", headers=AUTH, json=stream) as s:
        assert s.headers["x-thinktank-run-id"].startswith("run_")
        lines = [line async for line in s.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [orjson.loads(line[6:]) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Fused: use PostgreSQL, start simple."
    assert chunks[-1]["usage"]["cost"] > 0
    # a debate through the same endpoint
    d = await client.post(api + "/v1/chat/completions", headers=AUTH,
                          json={"model": "debate/panel", "messages": [{"role": "user", "content": "DB?"}]})
    assert d.status_code == 200 and d.json()["choices"][0]["message"]["content"]
    # failures keep the OpenAI error shape and the run id
    f = await client.post(api + "/v1/chat/completions", headers=AUTH,
                          json={"model": "ensemble/all-broken", "messages": [{"role": "user", "content": "q"}]})
    assert f.status_code == 502 and f.json()["error"]["code"] == "run_failed" and "x-thinktank-run-id" in f.headers
    missing = await client.post(api + "/v1/chat/completions", headers=AUTH,
                                json={"model": "ensemble/nope", "messages": [{"role": "user", "content": "q"}]})
    assert missing.status_code == 404


async def test_bad_input(api: str, client: httpx.AsyncClient) -> None:
    async def post(path: str, body: dict[str, Any]) -> httpx.Response:
        return await client.post(api + path, headers=AUTH, json=body)

    r = await post("/api/v1/ensembles", {"ensemble": "nope", "question": "q"})
    assert r.status_code == 404 and "nope" in r.json()["error"]["message"]
    r = await post("/api/v1/ensembles", {"members": ["alpha", "ghost"], "question": "q"})
    assert r.status_code == 400 and "ghost" in r.json()["error"]["message"]
    r = await post("/api/v1/ensembles", {"ensemble": "council", "judge": "ghost", "strategy": "rubric",
                                         "question": "q"})
    assert r.status_code == 400 and "ghost" in r.json()["error"]["message"]
    r = await post("/api/v1/ensembles", {"members": [], "question": "q"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "members"
    r = await post("/api/v1/ensembles", {"ensemble": "council", "strategy": "pairwise", "question": "q"})
    assert r.status_code == 400 and "judge" in r.json()["error"]["message"]
    assert "Value error" not in r.json()["error"]["message"]
    for rounds in (0, 11):
        r = await post("/api/v1/debates", {"debate": "panel", "rounds": rounds, "question": "q"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "rounds"
    r = await post("/api/v1/debates", {"debate": "panel", "personas": ["Nobody"], "question": "q"})
    assert r.status_code == 400 and "Nobody" in r.json()["error"]["message"]
    r = await post("/api/v1/ensembles", {"ensemble": "council"})
    assert r.status_code == 400
    r = await post("/api/v1/ensembles", {"ensemble": "council", "question": "   "})
    assert r.status_code == 400 and "empty" in r.json()["error"]["message"]
    r = await post("/api/v1/ensembles", {"ensemble": "council", "question": "q", "base_url": "http://evil"})
    assert r.status_code == 422
    r = await post("/api/v1/ensembles", {"ensemble": "council", "question": "x" * (5 * 1024 * 1024)})
    assert r.status_code == 413
    r = await post("/api/v1/ensembles", {"ensemble": "council", "question": "q", "arena": True, "members": ["alpha"]})
    assert r.status_code == 400
    assert (await client.get(api + "/api/v1/runs/run_nope", headers=AUTH)).status_code == 404
    # nothing half-written: only runs that started are listed
    assert (await client.get(api + "/api/v1/runs", headers=AUTH)).json()["data"] == []


async def test_runs_belong_to_their_owner(api: str, client: httpx.AsyncClient) -> None:
    _, alice = await make_user(client, api, "alice@example.com")
    _, bob = await make_user(client, api, "bob@example.com")
    r = await client.post(api + "/api/v1/debates", headers=bearer(alice),
                          json={"debate": "panel", "question": "q", "plan": True, "rounds": 1})
    assert r.status_code == 200, r.text
    run_id = r.json()["id"]
    for method, path in [("GET", ""), ("GET", "/events?format=json"), ("POST", "/cancel"),
                         ("GET", "/documents/plan.md")]:
        resp = await client.request(method, api + f"/api/v1/runs/{run_id}{path}", headers=bearer(bob))
        assert resp.status_code == 404, (method, path)
    fb = await client.post(api + f"/api/v1/runs/{run_id}/feedback", headers=bearer(bob),
                           json={"answer": "A", "vote": "up"})
    assert fb.status_code == 404
    assert (await client.get(api + "/api/v1/runs", headers=bearer(bob))).json()["data"] == []
    own = await client.get(api + f"/api/v1/runs/{run_id}/documents/plan.md", headers=bearer(alice))
    assert own.status_code == 200 and own.headers["content-type"].startswith("text/markdown")
    assert (await client.get(api + f"/api/v1/runs/{run_id}/documents/x.md", headers=bearer(alice))).status_code == 404
    # an admin may read it
    assert (await client.get(api + f"/api/v1/runs/{run_id}", headers=AUTH)).status_code == 200


async def test_feedback_arena_and_leaderboard(api: str, client: httpx.AsyncClient) -> None:
    run = (await client.post(api + "/api/v1/ensembles", headers=AUTH,
                             json={"ensemble": "council", "question": "q", "tags": ["databases"]})).json()
    feedback = api + f"/api/v1/runs/{run['id']}/feedback"
    fb = await client.post(feedback, headers=AUTH, json={"answer": "A", "vote": "up"})
    assert fb.status_code == 201 and fb.json()["recorded"] == 2
    dup = await client.post(feedback, headers=AUTH, json={"answer": "A", "vote": "up"})
    assert dup.status_code == 409
    bad = await client.post(feedback, headers=AUTH, json={"answer": "Z", "vote": "up"})
    assert bad.status_code == 400
    # a blind arena: the models stay hidden until the vote
    arena = await client.post(api + "/api/v1/ensembles", headers=AUTH,
                              json={"ensemble": "pair", "question": "q", "arena": True, "tags": ["databases"]})
    assert arena.status_code == 200
    record = arena.json()
    assert "alpha" not in orjson.dumps(record["result"]).decode()
    assert all(c["model"] == "hidden" for c in record["calls"] if c["stage"] == "answer")
    events = (await client.get(api + f"/api/v1/runs/{record['id']}/events?format=json", headers=AUTH)).json()["data"]
    assert "alpha" not in orjson.dumps(events).decode() and "beta" not in orjson.dumps(events).decode()
    vote = await client.post(api + f"/api/v1/runs/{record['id']}/feedback", headers=AUTH, json={"winner": "B"})
    assert vote.status_code == 201
    assert set(vote.json()["revealed"].values()) == {"alpha", "beta"}
    revealed = (await client.get(api + f"/api/v1/runs/{record['id']}", headers=AUTH)).json()
    assert {a["model"] for a in revealed["result"]["answers"]} == {"alpha", "beta"}
    board = (await client.get(api + "/api/v1/leaderboard", headers=AUTH)).json()["data"]
    assert {row["model"] for row in board} == {"alpha", "beta", "gamma"}
    for row in board:
        assert row["ci_low"] <= row["rating"] <= row["ci_high"]
    assert [row["rank"] for row in board] == [1, 2, 3]
    tagged = (await client.get(api + "/api/v1/leaderboard?tag=databases", headers=AUTH)).json()["data"]
    assert len(tagged) == 3
    assert (await client.get(api + "/api/v1/leaderboard?tag=cooking", headers=AUTH)).json()["data"] == []


async def test_keys_limited_to_models_cannot_reach_other_members(api: str, client: httpx.AsyncClient) -> None:
    r = await client.post(api + "/api/v1/keys", headers=AUTH, json={"name": "k", "models": ["ensemble/council"]})
    key = r.json()["key"]
    listed = [m["id"] for m in (await client.get(api + "/v1/models", headers=bearer(key))).json()["data"]]
    assert listed == ["ensemble/council"]
    denied = await client.post(api + "/v1/chat/completions", headers=bearer(key),
                               json={"model": "ensemble/council", "messages": [{"role": "user", "content": "q"}]})
    assert denied.status_code == 400 and "not allowed" in denied.json()["error"]["message"]
    r = await client.post(api + "/api/v1/keys", headers=AUTH,
                          json={"name": "k2", "models": ["ensemble/pair", "alpha", "beta"]})
    ok = await client.post(api + "/v1/chat/completions", headers=bearer(r.json()["key"]),
                           json={"model": "ensemble/pair", "messages": [{"role": "user", "content": "q"}]})
    assert ok.status_code == 200


async def test_demo_has_an_ensemble_and_a_debate(gateway: Start, client: httpx.AsyncClient) -> None:
    from thinktank.discovery import demo_config

    api = await gateway(demo_config().model_dump(mode="json"))
    ids = [m["id"] for m in (await client.get(api + "/v1/models", headers=AUTH)).json()["data"]]
    assert "ensemble/demo-council" in ids and "debate/demo-panel" in ids
    e = await client.post(api + "/api/v1/ensembles", headers=AUTH, json={"ensemble": "demo-council", "question": "q"})
    assert e.status_code == 200 and e.json()["result"]["synthesis"]["method"] == "chairman"
    d = await client.post(api + "/api/v1/debates", headers=AUTH,
                          json={"debate": "demo-panel", "question": "Which database?", "plan": True})
    assert d.status_code == 200
    result = d.json()["result"]
    assert result["stopped"] == "converged" and result["rounds_held"] == 2
    assert "## Remaining disagreements" in result["answer"]
    assert d.json()["documents"] == ["plan.md", "tasks.md"]


async def test_run_survives_client_disconnect(api: str, client: httpx.AsyncClient) -> None:
    async with client.stream("POST", api + "/api/v1/ensembles", headers=AUTH,
                             json={"ensemble": "pair", "members": ["alpha", "snail"], "question": "q",
                                   "stream": True}) as r:
        run_id = r.headers["x-thinktank-run-id"]
    for _ in range(100):
        run = (await client.get(api + f"/api/v1/runs/{run_id}", headers=AUTH)).json()
        if run["status"] != "running":
            break
        await asyncio.sleep(0.05)
    assert run["status"] == "completed"


async def test_a_streamed_chat_completion_on_an_ensemble_goes_on_when_its_client_leaves(
        api: str, client: httpx.AsyncClient) -> None:
    """The run a chat completion started finishes without its client, and the request is recorded with
    everything the run cost (after it ends), as a client that went away (499)."""
    body = {"model": "ensemble/slowish", "messages": [{"role": "user", "content": "q"}], "stream": True}
    async with client.stream("POST", api + "/v1/chat/completions", headers=AUTH, json=body) as r:
        assert r.status_code == 200
        run_id = r.headers["x-thinktank-run-id"]
        async for line in r.aiter_lines():
            if line.startswith(": stage answer"):
                break  # members are answering (snail takes 0.4 s): the client goes away
    for _ in range(200):
        run = (await client.get(api + f"/api/v1/runs/{run_id}", headers=AUTH)).json()
        if run["status"] != "running":
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the run never ended")
    # the run went on to the end: both members answered
    assert run["status"] == "completed", run
    assert len([c for c in run["calls"] if c["answer"]]) == 2 and run["cost_usd"] > 0
    usage: list[dict[str, Any]] = []
    for _ in range(100):  # recorded once the run has ended (the writer is buffered)
        await asyncio.sleep(0.05)
        usage = (await client.get(api + "/api/v1/usage?group_by=model", headers=AUTH)).json()["data"]
        if any(u["group"] == "ensemble/slowish" for u in usage):
            break
    [row] = [u for u in usage if u["group"] == "ensemble/slowish"]
    assert row["requests"] == 1 and row["cost_usd"] == pytest.approx(run["cost_usd"])
    # snail answered after the client left: its tokens are in the record too
    assert row["prompt_tokens"] == run["prompt_tokens"] and row["completion_tokens"] == run["completion_tokens"]


async def test_a_blind_arena_names_no_model_in_errors_config_or_its_stream(api: str, client: httpx.AsyncClient) -> None:
    """A member that fails says which model it was in its error ('slow gave no answer...'): hidden too."""
    body = {"ensemble": "waits", "question": "q", "arena": True, "member_timeout": 0.3, "stream": True}
    async with client.stream("POST", api + "/api/v1/ensembles", headers=AUTH, json=body) as r:
        assert r.status_code == 200
        run_id = r.headers["x-thinktank-run-id"]
        streamed = [e async for e in sse_events(r)]
    assert any(e["event"] == "model_failed" for e in streamed)
    record = (await client.get(api + f"/api/v1/runs/{run_id}", headers=AUTH)).json()
    assert record["result"]["failed"][0]["error"].startswith("a model gave no answer")
    assert record["config"]["members"] == "hidden until you vote"
    events = (await client.get(api + f"/api/v1/runs/{run_id}/events?format=json", headers=AUTH)).json()["data"]
    replay = await client.get(api + f"/api/v1/runs/{run_id}/events", headers=AUTH)
    for text in (orjson.dumps(streamed).decode(), orjson.dumps(record).decode(), orjson.dumps(events).decode(),
                 replay.text):
        assert "slow" not in text and "alpha" not in text
    # A vote needs two answers: only one came back, so the models stay hidden.
    vote = await client.post(api + f"/api/v1/runs/{run_id}/feedback", headers=AUTH, json={"winner": "A"})
    assert vote.status_code == 400
