"""An evaluation survives its server: killed (``kill -9``) in the middle of an item, it goes on in the next server
from its record, on SQLite and on PostgreSQL. The items it finished are not asked again, nor is the answer the
unfinished item already had (the upstream counts its requests); its cost is the sum of its calls, its events have
no seq twice, and a follower that reconnects with ``Last-Event-ID`` gets the rest exactly once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..deliberation.test_resume_killed import ADMIN, H, _events, _follow, _kill_when_saved, _record, _wait
from ..fakes.process import Server
from .resume_upstream import EvalUpstream, config, eval_upstream

QUESTIONS = [f"How do we cross river number {i}?" for i in range(6)]


@pytest.fixture
def upstream() -> Iterator[EvalUpstream]:
    with eval_upstream() as fake:
        yield fake


@pytest.fixture
def run_env(env: dict[str, str], db_url: str, tmp_path: Path, upstream: EvalUpstream) -> dict[str, str]:
    cfg = tmp_path / "evals.yaml"
    cfg.write_text(config(upstream.url))
    return {**env, "THINKTANK_CONFIG": str(cfg), "THINKTANK_ADMIN_KEY": ADMIN, "THINKTANK_DATABASE_URL": db_url,
            "THINKTANK_RUN_STALE_AFTER": "2"}


def test_a_killed_evaluation_goes_on_without_asking_its_finished_items_again(
    server: type[Server], run_env: dict[str, str], upstream: EvalUpstream,
) -> None:
    # Beta's answer to the fourth question never comes; alpha's does (one call at a time: alpha's first).
    upstream.hold = lambda model, prompt: model == "beta" and "river number 3" in prompt
    first = server([], run_env)
    items = [{"id": f"r{i}", "question": q, "checks": [{"type": "contains", "value": "bridge"}]}
             for i, q in enumerate(QUESTIONS)]
    body = {"items": items, "candidates": ["alpha", "beta"], "judges": ["judge"], "concurrency": 1,
            "max_cost_usd": 50, "stream": True}
    with httpx.stream("POST", f"{first.url}/api/v1/eval/runs", headers=H, json=body, timeout=10) as r:
        assert r.status_code == 200
        run_id = r.headers["x-thinktank-run-id"]
        _wait("three items done, the fourth half answered", lambda: len(upstream.held) == 1 and len(
            (_record(first.url, run_id)["result"] or {}).get("items") or []) == 3)
        last = _kill_when_saved(first, run_id)

    second = server([], run_env)
    followed = _follow(second.url, run_id, last)
    record = _record(second.url, run_id)
    assert record["status"] == "completed", record["error"]
    result = record["result"]
    assert [i["id"] for i in result["items"]] == [f"r{i}" for i in range(6)]
    per = {c["candidate"]: c for c in result["summary"]["per_candidate"]}
    assert per["alpha"]["pass_rate"] == 1.0 and per["beta"]["pass_rate"] == 0.0
    assert per["alpha"]["win_rate"] == 1.0 and per["alpha"]["rank"] == 1
    # Every question asked once of each candidate, but the one held (its answer died with the server); each pair
    # judged once in each order.
    for i, q in enumerate(QUESTIONS):
        assert upstream.count("alpha", q) == 1, q
        assert upstream.count("beta", q) == (2 if i == 3 else 1), q
        assert upstream.count("judge", q) == 2, q
    answers = [c for c in record["calls"] if c["stage"] == "answer"]
    assert len(answers) == 12  # each answer once on the record, paid once
    assert not any(a["cached"] for i in result["items"] for a in i["answers"].values())
    assert record["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in record["calls"]))
    assert record["cost_usd"] == pytest.approx(0.05 * (12 + 12))
    events = _events(second.url, run_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [t for _, t in followed].count("resumed") == 1
    assert followed == [(e["seq"], e["type"]) for e in events if e["seq"] > last]
    assert followed[-1][1] == "done"
    assert [e["data"]["id"] for e in events if e["type"] == "eval_item"] == [f"r{i}" for i in range(6)]
    assert [e["type"] for e in events].count("eval_started") == 1
    listed = httpx.get(f"{second.url}/api/v1/eval/runs", headers=H, timeout=5).json()["data"]
    assert [(r["id"], r["status"]) for r in listed] == [(run_id, "completed")]
