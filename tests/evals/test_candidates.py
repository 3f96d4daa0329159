"""Any catalog name is a candidate or a judge: an ensemble (a child run, its cost counted once), a rubric judge, the
local embeddings for similarity; an evaluation is recorded in the usage like any run, held to prices when capped,
and runs where it was asked even where new runs go to the queue's workers."""

from __future__ import annotations

from typing import Any

import pytest

from thinktank.knowledge.embeddings import LocalEmbedder

from .conftest import PRICE, EvalEnv, Start, mock, models
from .test_api import ITEMS

RUBRIC_JUDGE = [
    {"match": r"<answer>\s*[^<]*(Paris|Rome)", "reply": "It names the right city.\nVERDICT: PASS"},
    {"match": "<answer>", "reply": "It does not.\nVERDICT: FAIL"},
]


async def test_an_ensemble_is_a_candidate_like_any_model(start_env: Start) -> None:
    api: EvalEnv = await start_env(models(), config={"ensembles": [
        {"name": "pair", "members": ["quick", "wrong"], "strategy": "heuristic"}]})
    record = await api.evaluate({"items": ITEMS, "candidates": ["wrong", "ensemble/pair"], "judges": ["judge"]})
    assert record["status"] == "completed", record["error"]
    answers = [i["answers"]["ensemble/pair"] for i in record["result"]["items"]]
    assert all(a["text"] and a["error"] is None for a in answers)
    children = (await api.get("/api/v1/runs", kind="ensemble")).json()["data"]
    assert len(children) == 3 and all(c["status"] == "completed" for c in children)
    assert [c["model"] for c in record["calls"] if c["stage"] == "answer"].count("ensemble/pair") == 3
    assert record["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in record["calls"]))


async def test_rubric_checks_ask_their_judge_and_an_unreadable_one_is_unknown(start_env: Start) -> None:
    api: EvalEnv = await start_env(models(rubric=mock("rubric", rules=RUBRIC_JUDGE)))
    checks = [{"type": "rubric", "criterion": "names the capital", "judge": "rubric"},
              {"type": "rubric", "criterion": "is polite", "name": "polite"}]
    record = await api.evaluate({"items": ITEMS[:2], "candidates": ["quick", "wrong"], "judges": ["garbled-judge"],
                                 "checks": checks})
    fr = record["result"]["items"][0]["answers"]
    assert [(c["name"], c["passed"]) for c in fr["quick"]["checks"]] == [
        ("contains 'Paris'", True), ("rubric 'names the capital'", True), ("polite", None)]
    assert [c["passed"] for c in fr["wrong"]["checks"]] == [False, False, None]
    per = {c["candidate"]: c for c in record["result"]["summary"]["per_candidate"]}
    assert per["quick"]["checks_unknown"] == 2 and per["quick"]["checks_total"] == 6
    stages = [(c["stage"], c["model"]) for c in record["calls"]]
    assert stages.count(("check", "rubric")) == 4
    assert stages.count(("check", "garbled-judge")) == 4 * 2  # the default judge, asked again once each time


async def test_similarity_to_the_reference_uses_the_local_embeddings(start_env: Start,
                                                                     local_embedder: LocalEmbedder) -> None:
    api: EvalEnv = await start_env(models(), local_embedder=local_embedder)
    items: list[dict[str, Any]] = [{"id": "fr", "question": "What is the capital of France?",
                                    "reference": "Paris is the capital of France.",
                                    "checks": [{"type": "similar", "threshold": 0.7}]}]
    record = await api.evaluate({"items": items, "candidates": ["quick", "wrong"]})
    answers = record["result"]["items"][0]["answers"]
    quick, wrong = answers["quick"]["checks"][0], answers["wrong"]["checks"][0]
    assert quick["passed"] is True and wrong["passed"] is False
    assert quick["score"] > 0.7 > wrong["score"]


async def test_a_cap_needs_priced_models(start_env: Start) -> None:
    unpriced = {"name": "unpriced", "provider": "openai", "model": "house-model-7", "api_key": "sk-x",
                "base_url": "http://127.0.0.1:9/v1"}
    api: EvalEnv = await start_env([*models(), unpriced], config={"ensembles": [
        {"name": "mixed", "members": ["quick", "unpriced"], "strategy": "heuristic"}]})
    for body in ({"candidates": ["quick", "unpriced"]}, {"candidates": ["quick", "ensemble/mixed"]},
                 {"candidates": ["quick", "wrong"], "judges": ["unpriced"]}):
        r = await api.post("/api/v1/eval/runs", {"items": ITEMS, "max_cost_usd": 1, **body})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "model_unpriced" and "'unpriced'" in r.json()["error"]["message"]
    assert await api.rows("runs") == 0
    # (mock models are free: a known price of $0)
    record = await api.evaluate({"items": ITEMS, "max_cost_usd": 1, "candidates": ["quick", "wrong"]})
    assert record["status"] == "completed"


async def test_the_evaluation_is_recorded_in_the_usage(start_env: Start) -> None:
    api: EvalEnv = await start_env(models(quick=mock("quick", price=PRICE, replies=["Paris."]),
                                          wrong=mock("wrong", price=PRICE, replies=["London."])))
    record = await api.evaluate({"items": ITEMS, "candidates": ["quick", "wrong"], "max_cost_usd": 5,
                                 "name": "capitals"})
    assert record["cost_usd"] > 0
    await api.app.state.usage_writer.flush()
    usage = (await api.get("/api/v1/usage", group_by="model")).json()["data"]
    row = next(u for u in usage if u["group"] == "evaluation/capitals")
    assert row["cost_usd"] == pytest.approx(record["cost_usd"])


async def test_an_evaluation_runs_where_it_was_asked_when_new_runs_go_to_the_queue(start_env: Start) -> None:
    api: EvalEnv = await start_env(models(), run_placement="queue")
    record = await api.evaluate({"items": ITEMS, "candidates": ["quick", "wrong"], "judges": ["judge"]})
    assert record["status"] == "completed" and len(record["result"]["items"]) == 3
