"""What the issue lists as bad input, each a test over HTTP: a malformed dataset line, an unknown candidate or judge
(400 before anything is spent), a judge whose replies cannot be read, a candidate failing on some items, a budget
reached mid-way; and someone else's datasets and evaluations (404), numbers out of range and text that is not
Unicode (4xx, never 500)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import AUTH, PRICE, EvalEnv, Start, mock, models
from .test_api import ITEMS


async def test_a_csv_with_a_bad_row_is_stored_without_it(api: EvalEnv) -> None:
    content = 'id,question,reference,tags\nfr,What is the capital of France?,Paris,geo;easy\nempty,,x,\n' \
              'it,What is the capital of Italy?,Rome,geo\n'
    r = await api.post("/api/v1/eval/datasets", {"name": "capitals", "content": content, "filename": "qa.csv"})
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["items"] == 2 and made["tags"] == ["easy", "geo"]
    assert [e["line"] for e in made["errors"]] == [3]


async def test_a_dataset_without_a_valid_line_is_refused_naming_the_first_errors(api: EvalEnv) -> None:
    r = await api.post("/api/v1/eval/datasets", {"name": "bad", "format": "jsonl",
                                                 "content": '{"question": 1}\nnot json\n'})
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "line 1" in message and "line 2" in message
    r = await api.post("/api/v1/eval/datasets", {"name": "bad", "items": [{"reference": "no question"}]})
    assert r.status_code == 400 and "line 1" in r.json()["error"]["message"]
    assert await api.rows("eval_datasets") == 0


@pytest.mark.parametrize(("body", "param"), [
    ({"candidates": ["quick", "nope"]}, "candidates"),
    ({"candidates": ["quick", "wrong"], "judges": ["nobody"]}, "judges"),
    ({"candidates": ["quick"], "checks": [{"type": "rubric", "criterion": "is right", "judge": "ghost"}]}, "checks"),
    ({"candidates": ["quick"], "checks": [{"type": "rubric", "criterion": "is right"}]}, "judges"),
    ({"candidates": ["quick", "quick"]}, "candidates"),
    ({"candidates": ["quick"], "checks": [{"type": "regex", "pattern": "("}]}, "checks"),
    ({"candidates": ["quick"], "checks": [{"type": "telepathy"}]}, "checks"),
    ({"candidates": []}, "candidates"),
])
async def test_an_unknown_candidate_or_judge_is_refused_before_anything_is_spent(
    api: EvalEnv, body: dict[str, Any], param: str,
) -> None:
    r = await api.post("/api/v1/eval/runs", {"items": ITEMS, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    await api.app.state.usage_writer.flush()
    assert await api.rows("runs") == 0 and await api.rows("usage") == 0
    assert api.asked("quick") == [] and api.asked("judge") == []


async def test_a_judge_whose_replies_cannot_be_read_is_asked_again_once_then_excluded(api: EvalEnv) -> None:
    record = await api.evaluate({"items": ITEMS[:2], "candidates": ["quick", "wrong"], "judges": ["garbled-judge"]})
    assert record["status"] == "completed"
    summary = record["result"]["summary"]
    assert len(summary["excluded"]) == 2
    assert {(e["item"], e["judge"]) for e in summary["excluded"]} == {("fr", "garbled-judge"), ("it", "garbled-judge")}
    assert all("unreadable reply twice" in e["reason"] for e in summary["excluded"])
    verdict = record["result"]["items"][0]["verdicts"][0]
    assert verdict["outcome"] is None and "unreadable" in verdict["error"]
    # each item's pair: two orders, each asked twice
    assert len(api.asked("garbled-judge")) == 2 * 2 * 2
    assert all(c["win_rate"] is None for c in summary["per_candidate"])


async def test_a_judge_preferring_the_first_position_yields_ties(api: EvalEnv) -> None:
    record = await api.evaluate({"items": ITEMS, "candidates": ["quick", "wrong"], "judges": ["first-judge"]})
    summary = record["result"]["summary"]
    assert summary["order_dependent"] == 3
    assert summary["pairs"][0]["ties"] == 3 and summary["pairs"][0]["win_rate"] == 0.5
    assert all(i["disagreement"] for i in record["result"]["items"])


async def test_a_candidate_failing_on_some_items_is_reported_per_item(start_env: Start) -> None:
    api: EvalEnv = await start_env(models(flaky=mock("flaky", fail_first=1, fail_status=500,
                                                     replies=["The capital is Paris, or Rome, or 4."])))
    record = await api.evaluate({"items": ITEMS, "candidates": ["flaky", "quick"], "judges": ["judge"],
                                 "concurrency": 1})
    assert record["status"] == "completed", record["error"]
    first = record["result"]["items"][0]["answers"]["flaky"]
    assert first["text"] is None and first["error"]
    assert first["checks"][0]["passed"] is False and first["checks"][0]["reason"].startswith("no answer")
    walkover = record["result"]["items"][0]["verdicts"][0]
    assert walkover["outcome"] == 0.0 and walkover["walkover"] == "flaky gave no answer"
    others = [i["answers"]["flaky"] for i in record["result"]["items"][1:]]
    assert all(a["error"] is None and a["text"] for a in others)
    per = {c["candidate"]: c for c in record["result"]["summary"]["per_candidate"]}
    assert per["flaky"]["failed"] == 1 and per["flaky"]["answered"] == 2


async def test_a_budget_reached_midway_keeps_the_partial_result(start_env: Start) -> None:
    api: EvalEnv = await start_env(models(quick=mock("quick", price=PRICE, replies=["Paris, I think."]),
                                          wrong=mock("wrong", price=PRICE, replies=["London."])))
    items = [{"id": f"q{i}", "question": f"Question number {i}?"} for i in range(8)]
    r = await api.post("/api/v1/eval/runs", {"items": items, "candidates": ["quick", "wrong"], "max_cost_usd": 0.2,
                                             "max_tokens": 20, "concurrency": 1, "wait": True})
    assert r.status_code == 200, r.text
    record = r.json()
    assert record["status"] == "budget_exceeded"
    assert "max_cost_usd" in record["error"]
    result = record["result"]
    assert result["partial"] is True and result["total_items"] == 8
    assert 0 < len(result["items"]) < 8
    assert result["summary"]["items"] == len(result["items"])
    assert record["cost_usd"] <= 0.2
    assert record["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in record["calls"]))
    paid = sum(a["cost_usd"] for i in result["items"] for a in i["answers"].values())
    assert 0 < paid <= record["cost_usd"]


async def test_someone_elses_datasets_and_evaluations_are_404(api: EvalEnv) -> None:
    mine = await api.dataset(ITEMS)
    record = await api.evaluate({"dataset_id": mine, "candidates": ["quick"]})
    other = await api.user("other@example.com")
    for path in (f"/api/v1/eval/datasets/{mine}", f"/api/v1/eval/runs/{record['id']}",
                 f"/api/v1/eval/runs/{record['id']}/export"):
        assert (await api.get(path, other)).status_code == 404, path
    assert (await api.http.delete(f"{api.url}/api/v1/eval/datasets/{mine}", headers=other)).status_code == 404
    assert (await api.post(f"/api/v1/eval/runs/{record['id']}/cancel", {}, other)).status_code == 404
    r = await api.post("/api/v1/eval/runs", {"dataset_id": mine, "candidates": ["quick"]}, other)
    assert r.status_code == 404 and r.json()["error"]["param"] == "dataset_id"
    r = await api.post("/api/v1/eval/runs", {"rejudge_of": record["id"], "judges": ["judge"]}, other)
    assert r.status_code == 404 and r.json()["error"]["param"] == "rejudge_of"
    assert (await api.get("/api/v1/eval/datasets", other)).json()["data"] == []
    assert (await api.get("/api/v1/eval/runs", other)).json()["data"] == []
    assert (await api.get(f"/api/v1/eval/datasets/{mine}")).status_code == 200  # still there, and still mine
    assert (await api.get(f"/api/v1/eval/runs/{record['id']}")).status_code == 200


@pytest.mark.parametrize("raw", [
    b'{"name": "x", "items": [{"id": "a", "question": "q\\ud800"}]}',
    b'{"name": "x\\udfff", "items": [{"question": "q"}]}',
    b'{"name": "x", "format": "jsonl", "content": "{\\"question\\": \\"\\ud83d\\"}"}',
    b'{"name": "x", "items": [{"question": "q", "checks": [{"type": "numeric", "value": 1e400}]}]}',
    b'{"name": "x", "items": [{"question": "q", "tags": [100000000000000000000000000000]}]}',
    b'{"name": "x", "items": "not a list"}',
    b'{"name": 18446744073709551615, "items": [{"question": "q"}]}',
    b'{"name": "x", "items": [{"question": "q"}], "extra": 1}',
    b'\xff\xfe{"name": "x"}',
])
async def test_bad_dataset_bodies_are_4xx_never_500(api: EvalEnv, raw: bytes) -> None:
    r = await api.http.post(api.url + "/api/v1/eval/datasets", content=raw,
                            headers={**AUTH, "content-type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert await api.rows("eval_datasets") == 0


async def test_a_huge_integer_id_is_kept_as_text(api: EvalEnv) -> None:
    raw = b'{"name": "x", "items": [{"id": 18446744073709551615, "question": "What is the capital of France?"}]}'
    r = await api.http.post(api.url + "/api/v1/eval/datasets", content=raw,
                            headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 201, r.text
    stored = (await api.get(f"/api/v1/eval/datasets/{r.json()['id']}")).json()["data"]
    assert stored == [{"id": "18446744073709551615", "question": "What is the capital of France?"}]
    record = await api.evaluate({"dataset_id": r.json()["id"], "candidates": ["quick"]})
    assert record["result"]["items"][0]["id"] == "18446744073709551615"


@pytest.mark.parametrize("body", [
    {"candidates": ["quick"], "concurrency": 18446744073709551615},
    {"candidates": ["quick"], "concurrency": 0},
    {"candidates": ["quick"], "concurrency": 33},
    {"candidates": ["quick"], "max_tokens": 10**30},
    {"candidates": ["quick"], "max_cost_usd": -1},
    {"candidates": ["quick"] * 9},
    {"candidates": ["quick"], "judges": ["judge", "first-judge", "garbled-judge", "wrong"]},
    {"candidates": ["quick"], "temperature": 9},
    {"candidates": ["quick"], "rejudge_of": "run_nope"},
    {"candidates": ["quick"], "dataset_id": "eds_nope"},
    {"candidates": ["quick"], "dataset_id": "eds_nope", "items": ITEMS},
    {"candidates": ["quick"], "items": []},
    {"candidates": ["quick"], "items": [{"question": 1}]},
    {"candidates": "quick"},
    {"candidates": ["quick"], "checks": [{"type": "numeric", "value": 10**30, "tolerance": -1}]},
])
async def test_bad_evaluation_bodies_are_4xx_and_start_nothing(api: EvalEnv, body: dict[str, Any]) -> None:
    full = {"items": ITEMS, **body} if "dataset_id" not in body and "items" not in body else body
    r = await api.post("/api/v1/eval/runs", full)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert await api.rows("runs") == 0


@pytest.mark.parametrize("raw", [
    b'{"items": [{"question": "q\\ud800"}], "candidates": ["quick"]}',
    b'{"items": [{"question": "q"}], "candidates": ["qu\\udc00ick"]}',
    b'{"items": [{"question": "q"}], "candidates": ["quick"], "max_cost_usd": 1e400}',
])
async def test_bad_evaluation_bytes_are_4xx(api: EvalEnv, raw: bytes) -> None:
    r = await api.http.post(api.url + "/api/v1/eval/runs", content=raw,
                            headers={**AUTH, "content-type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert await api.rows("runs") == 0


async def test_unknown_ids_and_formats_are_4xx(api: EvalEnv) -> None:
    assert (await api.get("/api/v1/eval/datasets/eds_nope")).status_code == 404
    assert (await api.get("/api/v1/eval/runs/run_nope")).status_code == 404
    assert (await api.post("/api/v1/eval/runs/run_nope/cancel", {})).status_code == 404
    record = await api.evaluate({"items": ITEMS[:1], "candidates": ["quick"]})
    assert (await api.get(f"/api/v1/eval/runs/{record['id']}/export", format="xlsx")).status_code == 422
    assert (await api.post(f"/api/v1/eval/runs/{record['id']}/cancel", {})).status_code == 409
    assert (await api.get("/api/v1/eval/runs", limit=10**30)).status_code == 422
    ensemble_like = (await api.get("/api/v1/runs", kind="evaluation")).json()["data"]
    assert [r["id"] for r in ensemble_like] == [record["id"]]


@pytest.mark.parametrize("raw_id", ["%ED%A0%80", "%FF%FE", "x" * 300, "%00"])
async def test_odd_ids_in_paths_are_4xx(api: EvalEnv, raw_id: str) -> None:
    for method, path in (("GET", f"/api/v1/eval/datasets/{raw_id}"), ("DELETE", f"/api/v1/eval/datasets/{raw_id}"),
                         ("GET", f"/api/v1/eval/runs/{raw_id}"), ("GET", f"/api/v1/eval/runs/{raw_id}/export"),
                         ("POST", f"/api/v1/eval/runs/{raw_id}/cancel")):
        r = await api.http.request(method, api.url + path, headers=AUTH)
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text)


@pytest.mark.parametrize(("path", "body"), [
    ("/api/v1/eval/datasets", {"name": "nul\u0000", "items": ITEMS}),
    ("/api/v1/eval/runs", {"name": "nul\u0000", "items": ITEMS, "candidates": ["quick"]}),
    ("/api/v1/eval/runs", {"tags": ["nul\u0000"], "items": ITEMS, "candidates": ["quick"]}),
    ("/api/v1/eval/runs", {"dataset_id": "eds_\u0000", "candidates": ["quick"]}),
    ("/api/v1/eval/runs", {"items": ITEMS, "candidates": ["quick\u0000"]}),
])
async def test_a_nul_character_in_a_name_is_4xx(api: EvalEnv, path: str, body: dict[str, Any]) -> None:
    r = await api.post(path, body)
    assert 400 <= r.status_code < 500, r.text
    assert await api.rows("runs") == 0 and await api.rows("eval_datasets") == 0


async def test_a_nul_character_in_a_question_is_stored_and_asked(api: EvalEnv) -> None:
    """In a JSON body a NUL is refused, as on every /api route (400 naming it); in a dataset file's text, an item's
    ``\\u0000`` escape is the dataset's own: stored and asked."""
    items = [{"id": "nul", "question": "What is the capital of France?\u0000", "reference": "Paris\u0000"}]
    refused = await api.post("/api/v1/eval/datasets", {"name": "qa", "items": items})
    assert refused.status_code == 400 and "NUL" in refused.json()["error"]["message"], refused.text
    r = await api.post("/api/v1/eval/datasets", {"name": "qa", "format": "jsonl", "content": json.dumps(items[0])})
    assert r.status_code == 201, r.text
    dataset = r.json()["id"]
    record = await api.evaluate({"dataset_id": dataset, "candidates": ["quick"]})
    assert record["status"] == "completed", record["error"]
    assert record["result"]["items"][0]["question"] == "What is the capital of France?\u0000"
