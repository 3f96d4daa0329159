"""An evaluation is a run like the others: its events streamed (and taken up again with ``Last-Event-ID``),
cancelled with what it finished kept, held to its concurrency, and its answers cached so that re-judging asks no
candidate again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ..fakes.openai import completion
from ..fakes.upstream import FakeUpstream, Recorded, Reply
from .conftest import AUTH, PRICE, EvalEnv, Start, judge_preferring, mock, models, sse_events
from .test_api import ITEMS


async def test_events_stream_and_resume_after_the_last_event_id(api: EvalEnv) -> None:
    async with api.http.stream("POST", api.url + "/api/v1/eval/runs", headers=AUTH, json={
            "items": ITEMS, "candidates": ["quick", "wrong"], "judges": ["judge"], "stream": True}) as r:
        assert r.status_code == 200
        run_id = r.headers["x-thinktank-run-id"]
        events = [e async for e in sse_events(r)]
    types = [e["event"] for e in events]
    assert types[:2] == ["run_started", "eval_started"] and types[-1] == "done"
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert events[1]["data"]["items"] == 3 and events[1]["data"]["candidates"] == ["quick", "wrong"]
    assert types.count("eval_answer") == 6 and types.count("eval_checked") == 6 and types.count("eval_judged") == 3
    assert types.count("eval_item") == 3
    progress = [e["data"] for e in events if e["event"] == "eval_progress"]
    assert [(p["done"], p["total"]) for p in progress] == [(1, 3), (2, 3), (3, 3)]
    answer = next(e["data"] for e in events if e["event"] == "eval_answer")
    assert set(answer) >= {"item", "candidate", "ok", "cost_usd", "latency_ms", "cached"}
    judged = next(e["data"] for e in events if e["event"] == "eval_judged")
    assert (judged["a"], judged["b"], judged["judge"], judged["outcome"]) == ("quick", "wrong", "judge", 1.0)
    record = (await api.get(f"/api/v1/eval/runs/{run_id}")).json()
    items = [{k: v for k, v in e["data"].items() if k not in ("seq", "ts", "type")}
             for e in events if e["event"] == "eval_item"]
    assert sorted(items, key=lambda i: str(i["id"])) == record["result"]["items"]  # (ids sorted: fr, it, sum)
    # Taken up again after event 5: exactly the rest, once.
    async with api.http.stream("GET", f"{api.url}/api/v1/runs/{run_id}/events",
                               headers={**AUTH, "Last-Event-ID": "5"}) as r:
        rest = [e async for e in sse_events(r)]
    assert [(e["id"], e["event"]) for e in rest] == [(e["id"], e["event"]) for e in events[5:]]


def _upstream(hang: str, holding: list[bool] | None = None) -> FakeUpstream:
    """Answers every question at once, except those containing ``hang``: never answered (while ``holding[0]``)."""

    def handler(rec: Recorded) -> Reply:
        body = rec.json if isinstance(rec.json, dict) else {}
        prompt = "\n".join(str(m.get("content")) for m in body.get("messages") or [])
        if hang in prompt and (holding is None or holding[0]):
            return Reply(hang=True)
        return Reply(json=completion(f"{body.get('model')} says: it depends.", model=str(body.get("model")),
                                     prompt_tokens=10, completion_tokens=5))

    return FakeUpstream(handler)


@pytest.fixture
async def hanging() -> AsyncIterator[FakeUpstream]:
    fake = _upstream("Question 3")
    await fake.start()
    yield fake
    await fake.close()


def _remote(url: str, *names: str) -> list[dict[str, Any]]:
    return [{"name": n, "provider": "openai", "base_url": url + "/v1", "api_key": "sk-x", "input_price": PRICE,
             "output_price": PRICE} for n in names]


async def _until(what: str, check: Any, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


async def test_a_cancelled_evaluation_keeps_the_items_it_finished(start_env: Start, hanging: FakeUpstream) -> None:
    api: EvalEnv = await start_env(_remote(hanging.url, "alpha", "beta"))
    items = [{"id": f"q{i}", "question": f"Question {i}?"} for i in range(6)]
    r = await api.post("/api/v1/eval/runs", {"items": items, "candidates": ["alpha", "beta"], "concurrency": 1})
    assert r.status_code == 202 and r.json()["status"] == "running"
    run_id = r.json()["id"]
    assert r.headers["location"] == f"/api/v1/eval/runs/{run_id}"
    await _until("the fourth question asked", lambda: len(hanging.requests) == 7)
    running = (await api.get(f"/api/v1/eval/runs/{run_id}", calls="false")).json()
    assert running["status"] == "running" and [i["id"] for i in running["result"]["items"]] == ["q0", "q1", "q2"]
    assert "calls" not in running
    summaries: list[Any] = []

    async def summarized() -> bool:  # (made in the background after each item: it may lag a moment)
        summaries.append((await api.get(f"/api/v1/eval/runs/{run_id}")).json()["result"]["summary"])
        return bool(summaries[-1] and summaries[-1]["items"] == 3)

    async with asyncio.timeout(20):
        while not await summarized():
            await asyncio.sleep(0.05)
    r = await api.post(f"/api/v1/eval/runs/{run_id}/cancel", {})
    assert r.status_code == 202 and r.json() == {"id": run_id, "status": "cancelled"}
    record = (await api.get(f"/api/v1/eval/runs/{run_id}")).json()
    assert record["status"] == "cancelled"
    result = record["result"]
    assert result["partial"] is True and result["total_items"] == 6
    assert [i["id"] for i in result["items"]] == ["q0", "q1", "q2"]
    assert [c["candidate"] for c in result["summary"]["per_candidate"]] == ["alpha", "beta"]
    assert len(hanging.requests) == 7  # one call at a time: the held one was the last asked
    assert record["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in record["calls"]))
    listed = (await api.get("/api/v1/eval/runs", status="cancelled")).json()["data"]
    assert [r["id"] for r in listed] == [run_id]


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_at_most_concurrency_calls_are_under_way(start_env: Start, concurrency: int) -> None:
    fake = _upstream("Question")  # nothing is ever answered
    await fake.start()
    try:
        api: EvalEnv = await start_env(_remote(fake.url, "alpha", "beta"))
        items = [{"id": f"q{i}", "question": f"Question {i}?"} for i in range(6)]
        r = await api.post("/api/v1/eval/runs", {"items": items, "candidates": ["alpha", "beta"],
                                                 "concurrency": concurrency})
        await _until("the calls under way", lambda: len(fake.requests) == concurrency)
        r = await api.post(f"/api/v1/eval/runs/{r.json()['id']}/cancel", {})
        assert r.json()["status"] == "cancelled"
        # Nothing finished, so nothing more was asked than the calls a limit of `concurrency` lets through.
        assert len(fake.requests) == concurrency
    finally:
        await fake.close()


async def test_the_answer_cache_spares_the_candidates_a_second_time(start_env: Start) -> None:
    api: EvalEnv = await start_env(models(
        quick=mock("quick", price=PRICE, rules=[{"match": "France", "reply": "Paris."},
                                                {"match": "Italy", "reply": "Rome."}], replies=["4"]),
        wrong=mock("wrong", price=PRICE, replies=["London."]),
        judge=mock("judge", price=PRICE, rules=judge_preferring("Paris|Rome|4"))))
    first = await api.evaluate({"items": ITEMS, "candidates": ["quick", "wrong"], "judges": ["judge"]})
    asked = (len(api.asked("quick")), len(api.asked("wrong")))
    assert asked == (3, 3)
    answer_cost = sum(c["cost_usd"] for c in first["calls"] if c["stage"] == "answer")
    assert answer_cost > 0

    # The same questions, another judge: no candidate is asked again; the answers are marked cached, keep the
    # cost they had, and this run pays only for its judge.
    second = await api.evaluate({"items": ITEMS, "candidates": ["quick", "wrong"], "judges": ["first-judge"]})
    assert (len(api.asked("quick")), len(api.asked("wrong"))) == asked
    assert [c["stage"] for c in second["calls"]] == ["judge"] * 6
    answers = [a for i in second["result"]["items"] for a in i["answers"].values()]
    assert all(a["cached"] for a in answers)
    before = {(i["id"], c): a["text"] for i in first["result"]["items"] for c, a in i["answers"].items()}
    assert {(i["id"], c): a["text"] for i in second["result"]["items"] for c, a in i["answers"].items()} == before
    assert sum(a["cost_usd"] for a in answers) == pytest.approx(answer_cost)
    assert second["cost_usd"] == 0.0  # (the first-position judge is not priced)
    events = (await api.get(f"/api/v1/runs/{second['id']}/events", format="json")).json()["data"]
    assert all(e["data"]["cached"] for e in events if e["type"] == "eval_answer")

    # Other answer parameters: asked again.
    third = await api.evaluate({"items": ITEMS[:1], "candidates": ["quick"], "max_tokens": 50})
    assert len(api.asked("quick")) == 4 and third["result"]["items"][0]["answers"]["quick"]["cached"] is False


async def test_rejudging_an_evaluation_reuses_its_answers(api: EvalEnv) -> None:
    first = await api.evaluate({"items": ITEMS, "candidates": ["quick", "wrong"], "judges": ["first-judge"],
                                "max_tokens": 64, "name": "capitals"})
    asked = (len(api.asked("quick")), len(api.asked("wrong")))
    again = await api.evaluate({"rejudge_of": first["id"], "judges": ["judge"]})
    assert again["status"] == "completed", again["error"]
    assert (len(api.asked("quick")), len(api.asked("wrong"))) == asked
    assert again["config"]["candidates"] == ["quick", "wrong"] and again["config"]["rejudge_of"] == first["id"]
    assert again["config"]["max_tokens"] == 64
    summary = again["result"]["summary"]
    assert {c["candidate"]: c["win_rate"] for c in summary["per_candidate"]} == {"quick": 1.0, "wrong": 0.0}
    assert first["result"]["summary"]["order_dependent"] == 3 and summary["order_dependent"] == 0
    assert all(a["cached"] for i in again["result"]["items"] for a in i["answers"].values())
    # A candidate the first evaluation did not have is asked.
    third = await api.evaluate({"rejudge_of": first["id"], "candidates": ["quick", "first-judge"]})
    assert len(api.asked("quick")) == asked[0]
    assert not any(i["answers"]["first-judge"]["cached"] for i in third["result"]["items"])


async def test_an_evaluation_stopped_with_its_server_goes_on_in_the_next(start_env: Start) -> None:
    holding = [True]
    fake = _upstream("Question 3", holding)
    await fake.start()
    try:
        first: EvalEnv = await start_env(_remote(fake.url, "alpha", "beta"))
        items = [{"id": f"q{i}", "question": f"Question {i}?"} for i in range(6)]
        r = await first.post("/api/v1/eval/runs", {"items": items, "candidates": ["alpha", "beta"],
                                                   "concurrency": 1, "max_cost_usd": 10})
        run_id = r.json()["id"]
        await _until("the fourth question asked", lambda: len(fake.requests) == 7)
        await first.stop()  # a deployment: the run is left to be taken up, not cancelled
        holding[0] = False
        second: EvalEnv = await start_env(_remote(fake.url, "alpha", "beta"))
        record: dict[str, Any] = {}

        async def ended() -> bool:
            record.update((await second.get(f"/api/v1/eval/runs/{run_id}")).json())
            return bool(record["status"] != "running")

        async with asyncio.timeout(30):
            while not await ended():
                await asyncio.sleep(0.05)
        assert record["status"] == "completed", record["error"]
        assert [i["id"] for i in record["result"]["items"]] == [f"q{i}" for i in range(6)]
        asked = [str(rec.json["messages"][-1]["content"]) + " " + str(rec.json["model"]) for rec in fake.requests
                 if isinstance(rec.json, dict)]
        # Only the question under way when the server stopped was asked twice (its first answer never came).
        assert sorted(asked) == sorted([f"Question {i}? {m}" for i in range(6) for m in ("alpha", "beta")]
                                       + ["Question 3? alpha"])
        assert record["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in record["calls"]))
        events = (await second.get(f"/api/v1/runs/{run_id}/events", format="json")).json()["data"]
        assert [e["type"] for e in events].count("resumed") == 1
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    finally:
        await fake.close()
