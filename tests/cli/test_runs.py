"""``thinktank ask|debate|leaderboard``, run in-process on the demo's offline mock models."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from typer.testing import CliRunner, Result

from thinktank.api.app import _start, _stop, create_app
from thinktank.api.state import AppState
from thinktank.cli import app
from thinktank.config import Settings
from thinktank.discovery import demo_config

T = TypeVar("T")
RUN_ID = re.compile(r"run (run_[0-9a-f]+)")


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean environment (as the process tests have) with its own data directory."""
    for name in list(os.environ):
        if name.startswith("THINKTANK_") or name.endswith("_API_KEY"):
            monkeypatch.delenv(name)
    data = tmp_path / "data"
    monkeypatch.setenv("THINKTANK_DATA_DIR", str(data))
    monkeypatch.setenv("THINKTANK_ADMIN_KEY", "k")
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "120")
    return data


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def in_app(data: Path, work: Callable[[AppState], Awaitable[T]]) -> T:
    """Run ``work`` against the demo app on ``data``, started and stopped as the server does."""

    async def go() -> T:
        state = create_app(Settings(data_dir=data, admin_key="k"), demo_config()).state
        await _start(state)
        try:
            return await work(state)
        finally:
            await _stop(state)
            await state.http.close()

    return asyncio.run(go())


def table_rows(output: str) -> list[list[str]]:
    """The body rows of the rich table in ``output``, as lists of cell texts."""
    return [[c.strip() for c in line.strip().strip("│").split("│")]
            for line in output.splitlines() if line.strip().startswith("│")]


def test_ask_shows_members_ranking_and_answer_and_records_the_run(data_dir: Path) -> None:
    r = cli("ask", "Which database should a new web app use?", "--demo")
    assert r.exit_code == 0, r.output
    out = r.stdout
    for member in ("demo/alpha", "demo/beta", "demo/gamma"):
        assert re.search(rf"✓ member [ABC]\s+{re.escape(member)}\s+\d[\d,]* ms\s+\d+ tokens\s+\$0\.000000", out)
    rows = table_rows(out)
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert sorted(row[2] for row in rows) == ["demo/alpha", "demo/beta", "demo/gamma"]
    assert all(re.fullmatch(r"\d\.\d{3}", row[3]) and row[4].endswith(" ms") for row in rows)
    assert "Start with a managed PostgreSQL database and one well-tested service" in out
    assert out.index("Ranking (peer_review)") < out.index("Start with a managed PostgreSQL")
    match = RUN_ID.search(out)
    assert match is not None and "completed" in out.splitlines()[-1] and "cost $" in out

    async def read(state: AppState) -> dict[str, Any]:
        return await state.deliberation.get(match.group(1), state.auth.known_admin())

    record = in_app(data_dir, read)
    assert record["status"] == "completed" and record["question"] == "Which database should a new web app use?"
    order = record["result"]["ranking"]["order"]
    models = {a["label"]: a["model"] for a in record["result"]["answers"]}
    assert [row[1] for row in rows] == order and [row[2] for row in rows] == [models[x] for x in order]


def test_ask_json_prints_the_record_and_applies_the_strategy(data_dir: Path) -> None:
    r = cli("ask", "hello", "--demo", "--ensemble", "demo-council", "--strategy", "heuristic", "--json")
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout)
    assert record["status"] == "completed" and record["kind"] == "ensemble" and record["name"] == "demo-council"
    assert record["config"]["strategy"] == "heuristic" and record["result"]["ranking"]["strategy"] == "heuristic"
    assert record["result"]["answer"].startswith("Start with a managed PostgreSQL database")
    assert {c["stage"] for c in record["calls"]} == {"answer", "synthesis"}  # heuristic ranking calls no model

    async def read(state: AppState) -> list[dict[str, Any]]:
        return await state.deliberation.list_runs(state.auth.known_admin(), kind=None, status=None, limit=10,
                                                  before=None, everyone=True)

    assert [(run["id"], run["status"]) for run in in_app(data_dir, read)] == [(record["id"], "completed")]


def test_ask_unknown_or_ambiguous_ensemble_exits_2_naming_the_choices(data_dir: Path, tmp_path: Path) -> None:
    r = cli("ask", "q", "--demo", "--ensemble", "nope")
    assert r.exit_code == 2
    assert "error: There is no ensemble 'nope' (configured: demo-council)." in r.stderr
    cfg = tmp_path / "c.yaml"
    cfg.write_text("models:\n  - {name: m1, provider: mock}\nensembles:\n  - {name: solo, members: [m1]}\n")
    r = cli("ask", "q", "--demo", "--config", str(cfg))
    assert r.exit_code == 2
    assert "choose one with --ensemble: solo, demo-council." in r.stderr
    r = cli("ask", "q", "--demo", "--strategy", "rubric")
    assert r.exit_code == 2 and "needs a judge model" in r.stderr
    assert not RUN_ID.search(r.stdout)


def test_ask_run_that_fails_exits_1_with_its_error(data_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "models:\n"
        "  - {name: bad1, provider: mock, options: {fail_rate: 1.0, fail_status: 400}}\n"
        "  - {name: bad2, provider: mock, options: {fail_rate: 1.0, fail_status: 400}}\n"
        "ensembles:\n  - {name: doomed, members: [bad1, bad2]}\n")
    r = cli("ask", "q", "--config", str(cfg))
    assert r.exit_code == 1, r.output
    assert re.search(r"✗ member A\s+bad1\s+\S", r.stdout) and re.search(r"✗ member B\s+bad2\s+\S", r.stdout)
    assert "error: the run ended failed: Every member of the ensemble failed" in r.stderr
    assert r.stdout.splitlines()[-1].endswith("failed")
    r = cli("ask", "q", "--config", str(cfg), "--json")
    assert r.exit_code == 1
    record = json.loads(r.stdout)
    assert record["status"] == "failed" and record["error"].startswith("Every member of the ensemble failed")


def test_debate_with_plan_shows_rounds_and_writes_the_documents(data_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    r = cli("debate", "Which database for a new web app?", "--demo", "--plan", "--out", str(out_dir))
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "kind: decision   domains: software architecture, operations" in out
    panel = [row for row in table_rows(out) if row[0]]
    assert [row[3] for row in panel] == ["demo/alpha", "demo/beta", "demo/gamma"]
    assert "Use PostgreSQL and a single service first" in out and "[initial]" in out and "[revise]" in out
    assert "convergence: 0.55 (threshold 0.80)" in out and "convergence: 0.90 (threshold 0.80, converged)" in out
    assert "moderator asks: What would make you change your recommendation?" in out
    assert "## Answer\nStart simple and measure." in out
    assert out.index("round 1") < out.index("round 2") < out.index("## Answer")
    plan, tasks = out_dir / "plan.md", out_dir / "tasks.md"
    assert f"wrote {plan}" in out and f"wrote {tasks}" in out
    assert plan.read_text().startswith("# Plan\n## Goal\nShip v1.")
    assert tasks.read_text().startswith("# Tasks\n1. Set up the database.")


def test_debate_json_applies_the_overrides(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = cli("debate", "Which database?", "--demo", "--name", "demo-panel", "--experts", "2", "--rounds", "1",
            "--json")
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout)
    assert record["status"] == "completed" and record["kind"] == "debate"
    assert len(record["result"]["panel"]) == 2 and record["result"]["rounds_held"] == 1
    assert record["result"]["stopped"] == "max_rounds" and record["documents"] == []
    assert not (tmp_path / "plan.md").exists()
    # --plan without --out writes here; with --json the paths go to stderr so stdout stays JSON.
    r = cli("debate", "Which database?", "--demo", "--experts", "2", "--rounds", "1", "--plan", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["documents"] == ["plan.md", "tasks.md"]
    assert f"wrote {tmp_path / 'plan.md'}" in r.stderr
    assert (tmp_path / "plan.md").read_text().startswith("# Plan")
    assert (tmp_path / "tasks.md").read_text().startswith("# Tasks")
    r = cli("debate", "q", "--demo", "--experts", "9")
    assert r.exit_code == 2 and "experts: Input should be less than or equal to 8" in r.stderr


def test_leaderboard_empty_says_how_to_vote(data_dir: Path) -> None:
    r = cli("leaderboard")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("No votes yet.") and "POST /api/v1/runs/{id}/feedback" in r.stdout
    assert "No models are configured" not in r.stderr
    r = cli("leaderboard", "--json", "--tag", "x")
    assert json.loads(r.stdout) == {"tag": "x", "data": []}


def test_leaderboard_after_a_vote(data_dir: Path) -> None:
    async def vote(state: AppState) -> dict[str, Any]:
        from thinktank.deliberation.service import RunOptions
        from thinktank.types import Message

        service, admin = state.deliberation, state.auth.known_admin()
        cfg = service.resolve("ensemble", "demo-council", {"strategy": "heuristic"})
        admission = await state.gate.admit(admin, None, "ensemble/demo-council", 10)
        run = await service.start("ensemble", cfg, principal=admin, admission=admission,
                                  messages=[Message(role="user", content="q")], options=RunOptions(tags=["db"]))
        await service.wait(run)
        return await service.feedback(run.id, admin, answer="A", vote="up", winner=None)

    assert in_app(data_dir, vote)["recorded"] == 2
    r = cli("leaderboard", "--demo")
    assert r.exit_code == 0, r.output
    rows = table_rows(r.stdout)
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert (rows[0][1], rows[0][4], rows[0][5]) == ("demo/alpha", "2", "100%")  # answer A won both comparisons
    assert sorted((row[1], row[4], row[5]) for row in rows[1:]) == [("demo/beta", "1", "0%"), ("demo/gamma", "1", "0%")]
    assert all(re.fullmatch(r"-?\d+\.\d – -?\d+\.\d", row[3]) for row in rows)
    board = json.loads(cli("leaderboard", "--json", "--tag", "db").stdout)["data"]
    assert board[0]["model"] == "demo/alpha" and board[0]["win_rate"] == 1.0
    assert board[0]["rating"] > board[1]["rating"] and {row["games"] for row in board[1:]} == {1}
    assert cli("leaderboard", "--tag", "other").stdout.startswith("No votes yet for the tag 'other'.")
