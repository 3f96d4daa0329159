"""The evaluations' API end to end over HTTP: datasets uploaded (bad lines reported with their numbers), an
evaluation of two candidates with a judge and checks, its result as the spec says, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import AUTH, EvalEnv

ITEMS: list[dict[str, Any]] = [
    {"id": "fr", "question": "What is the capital of France?", "reference": "Paris", "tags": ["geo"],
     "checks": [{"type": "contains", "value": "Paris"}]},
    {"id": "it", "question": "What is the capital of Italy?", "reference": "Rome", "tags": ["geo"],
     "checks": [{"type": "contains", "value": "Rome"}]},
    {"id": "sum", "question": "What is 2 + 2?", "reference": "4", "tags": ["math"],
     "checks": [{"type": "contains", "value": "4"}]},
]


async def test_a_dataset_is_stored_with_its_bad_lines_reported(api: EvalEnv) -> None:
    content = "\n".join([
        '{"id": "fr", "question": "What is the capital of France?", "reference": "Paris", "tags": ["geo"]}',
        '{"id": "broken", "question": ',
        "",
        '{"id": "it", "question": "What is the capital of Italy?"}',
    ])
    r = await api.post("/api/v1/eval/datasets", {"name": "capitals", "format": "jsonl", "content": content})
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["items"] == 2 and made["name"] == "capitals" and made["tags"] == ["geo"]
    assert [e["line"] for e in made["errors"]] == [2]
    listed = (await api.get("/api/v1/eval/datasets")).json()["data"]
    assert [(d["id"], d["items"]) for d in listed] == [(made["id"], 2)]
    one = (await api.get(f"/api/v1/eval/datasets/{made['id']}")).json()
    assert [i["id"] for i in one["data"]] == ["fr", "it"]
    assert one["errors"] == made["errors"]


async def test_an_evaluation_of_two_candidates_with_a_judge_and_checks(api: EvalEnv) -> None:
    dataset = await api.dataset(ITEMS)
    record = await api.evaluate({"dataset_id": dataset, "candidates": ["quick", "wrong"], "judges": ["judge"]})
    assert record["kind"] == "evaluation" and record["status"] == "completed", record["error"]
    result = record["result"]
    summary = result["summary"]
    assert summary["items"] == 3 and summary["candidates"] == ["quick", "wrong"] and summary["judges"] == ["judge"]
    per = {c["candidate"]: c for c in summary["per_candidate"]}
    assert per["quick"]["pass_rate"] == 1.0 and per["wrong"]["pass_rate"] == 0.0
    assert per["quick"]["win_rate"] == 1.0 and per["wrong"]["win_rate"] == 0.0
    assert [i["id"] for i in result["items"]] == ["fr", "it", "sum"]
    fr = result["items"][0]
    assert fr["question"] == "What is the capital of France?" and fr["reference"] == "Paris" and fr["tags"] == ["geo"]
    assert fr["answers"]["quick"]["text"] == "The capital of France is Paris."
    assert fr["answers"]["quick"]["checks"][0]["passed"] is True
    assert fr["answers"]["wrong"]["checks"][0]["passed"] is False
    assert fr["answers"]["quick"]["cached"] is False
    assert [(v["a"], v["b"], v["judge"], v["outcome"]) for v in fr["verdicts"]] == [("quick", "wrong", "judge", 1.0)]
    assert fr["disagreement"] is True
    stages = [c["stage"] for c in record["calls"]]
    assert stages.count("answer") == 6 and stages.count("judge") == 6  # each pair judged in both orders
    listed = (await api.get("/api/v1/eval/runs")).json()["data"]
    assert [(r["id"], r["status"], r["candidates"], r["judges"], r["items"]) for r in listed] == [
        (record["id"], "completed", ["quick", "wrong"], ["judge"], 3)]
    assert (await api.get("/api/v1/runs", kind="evaluation")).json()["data"][0]["id"] == record["id"]


@pytest.mark.parametrize("fmt", ["csv", "markdown", "json"])
async def test_export(api: EvalEnv, fmt: str) -> None:
    record = await api.evaluate({"items": ITEMS, "candidates": ["quick", "wrong"], "judges": ["judge"]})
    r = await api.get(f"/api/v1/eval/runs/{record['id']}/export", format=fmt)
    assert r.status_code == 200, r.text
    if fmt == "csv":
        lines = r.text.splitlines()
        assert lines[0].startswith("item,question,reference,tags,candidate,answer")
        assert len(lines) == 1 + 3 * 2
        assert "fr,What is the capital of France?,Paris,geo,quick,The capital of France is Paris." in lines[1]
    elif fmt == "markdown":
        assert "| quick | 100.0 % | 100.0 %" in r.text and "| quick | wrong | 3 | 3 | 0 | 0 |" in r.text
    else:
        assert r.json() == record["result"]


async def test_a_dataset_larger_than_an_ordinary_body_is_taken_and_deleted(api: EvalEnv) -> None:
    # 2,000 lines of 2.6 KB: over the 4 MB limit of other bodies, under the 10 MB of a dataset.
    line = '{"id": "q%d", "question": "%s?"}'
    content = "\n".join(line % (i, "x" * 2600) for i in range(2000))
    assert 4 * 1024 * 1024 < len(content) < 10 * 1024 * 1024
    r = await api.post("/api/v1/eval/datasets", {"name": "big", "content": content})
    assert r.status_code == 201, r.text[:300]
    assert r.json()["items"] == 2000 and r.json()["errors"] == []
    too_big = "\n".join(line % (i, "y" * 250_000) for i in range(45))  # 11 MB
    r = await api.post("/api/v1/eval/datasets", {"name": "too big", "content": too_big})
    assert r.status_code == 400 and r.json()["error"]["code"] == "dataset_too_large", r.text[:300]
    [stored] = (await api.get("/api/v1/eval/datasets")).json()["data"]
    r = await api.http.delete(f"{api.url}/api/v1/eval/datasets/{stored['id']}", headers=AUTH)
    assert r.status_code == 204
    assert (await api.get(f"/api/v1/eval/datasets/{stored['id']}")).status_code == 404
    assert (await api.get("/api/v1/eval/datasets")).json()["data"] == []
