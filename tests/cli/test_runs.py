"""``thinktank ask|debate|leaderboard`` against ``thinktank serve --demo`` (one per module), and with ``--local``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..fakes.process import Server
from .helpers import ADMIN, cli, client_env, ok, table_rows

RUN_ID = re.compile(r"run (run_[0-9a-f]+)")
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def run_record(server: Server, run_id: str) -> dict[str, Any]:
    r = httpx.get(f"{server.url}/api/v1/runs/{run_id}", headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


def check_ask_view(out: str) -> list[list[str]]:
    """The live view of the demo council's run: members, the ranking table before the answer, the footer."""
    for member in ("demo/alpha", "demo/beta", "demo/gamma"):
        assert re.search(rf"✓ member [ABC]\s+{re.escape(member)}\s+\d[\d,]* ms\s+\d+ tokens\s+\$0\.000000", out)
    rows = table_rows(out)
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert sorted(row[2] for row in rows) == ["demo/alpha", "demo/beta", "demo/gamma"]
    assert all(re.fullmatch(r"\d\.\d{3}", row[3]) and row[4].endswith(" ms") for row in rows)
    assert "Start with a managed PostgreSQL database and one well-tested service" in out
    assert out.index("Ranking (peer_review)") < out.index("Start with a managed PostgreSQL")
    assert "completed" in out.splitlines()[-1] and "cost $" in out
    return rows


def test_ask_shows_members_ranking_and_answer_and_the_server_records_the_run(demo_server: Server) -> None:
    out = ok(cli("ask", "Which database should a new web app use?", env=client_env(demo_server)))
    rows = check_ask_view(out)
    match = RUN_ID.search(out)
    assert match is not None
    record = run_record(demo_server, match.group(1))
    assert record["status"] == "completed" and record["question"] == "Which database should a new web app use?"
    order = record["result"]["ranking"]["order"]
    models = {a["label"]: a["model"] for a in record["result"]["answers"]}
    assert [row[1] for row in rows] == order and [row[2] for row in rows] == [models[x] for x in order]


def test_ask_json_prints_the_record_and_applies_the_strategy(demo_server: Server) -> None:
    r = cli("ask", "hello", "--ensemble", "demo-council", "--strategy", "heuristic", "--json",
            env=client_env(demo_server))
    record = json.loads(ok(r))
    assert record["status"] == "completed" and record["kind"] == "ensemble" and record["name"] == "demo-council"
    assert record["config"]["strategy"] == "heuristic" and record["result"]["ranking"]["strategy"] == "heuristic"
    assert record["result"]["answer"].startswith("Start with a managed PostgreSQL database")
    assert {c["stage"] for c in record["calls"]} == {"answer", "synthesis"}  # heuristic ranking calls no model
    saved = run_record(demo_server, record["id"])
    assert (saved["status"], saved["result"]) == ("completed", record["result"])


def test_ask_unknown_ensemble_or_bad_strategy_exits_2(demo_server: Server) -> None:
    r = cli("ask", "q", "--ensemble", "nope", env=client_env(demo_server))
    assert r.exit_code == 2
    assert "error: There is no ensemble 'nope' (configured: demo-council)." in r.stderr
    r = cli("ask", "q", "--strategy", "rubric", env=client_env(demo_server))
    assert r.exit_code == 2 and "needs a judge model" in r.stderr  # the server's 400, as its message
    assert not RUN_ID.search(r.stdout)


def test_debate_with_plan_shows_rounds_and_writes_the_documents(demo_server: Server, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out = ok(cli("debate", "Which database for a new web app?", "--plan", "--out", str(out_dir),
                 env=client_env(demo_server)))
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
    run_id = RUN_ID.search(out)
    assert run_id is not None
    served = httpx.get(f"{demo_server.url}/api/v1/runs/{run_id.group(1)}/documents/plan.md", headers=AUTH).text
    assert plan.read_text() == (served if served.endswith("\n") else served + "\n")
    assert plan.read_text().startswith("# Plan\n## Goal\nShip v1.")
    assert tasks.read_text().startswith("# Tasks\n1. Set up the database.")


def test_debate_json_applies_the_overrides(demo_server: Server, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = client_env(demo_server)
    record = json.loads(ok(cli("debate", "Which database?", "--name", "demo-panel", "--experts", "2", "--rounds", "1",
                               "--json", env=env)))
    assert record["status"] == "completed" and record["kind"] == "debate"
    assert len(record["result"]["panel"]) == 2 and record["result"]["rounds_held"] == 1
    assert record["result"]["stopped"] == "max_rounds" and record["documents"] == []
    assert not (tmp_path / "plan.md").exists()
    # --plan without --out writes here; with --json the paths go to stderr so stdout stays JSON.
    r = cli("debate", "Which database?", "--experts", "2", "--rounds", "1", "--plan", "--json", env=env)
    assert json.loads(ok(r))["documents"] == ["plan.md", "tasks.md"]
    assert f"wrote {tmp_path / 'plan.md'}" in r.stderr
    assert (tmp_path / "plan.md").read_text().startswith("# Plan")
    assert (tmp_path / "tasks.md").read_text().startswith("# Tasks")
    r = cli("debate", "q", "--experts", "9", env=env)
    assert r.exit_code == 2 and "experts: Input should be less than or equal to 8" in r.stderr


def test_leaderboard_after_a_vote(demo_server: Server) -> None:
    assert cli("leaderboard", "--tag", "db", env=client_env(demo_server)).stdout.startswith(
        "No votes yet for the tag 'db'.")
    made = httpx.post(f"{demo_server.url}/api/v1/ensembles", headers=AUTH, timeout=60, json={
        "ensemble": "demo-council", "question": "q", "strategy": "heuristic", "tags": ["db"]})
    assert made.status_code == 200, made.text
    voted = httpx.post(f"{demo_server.url}/api/v1/runs/{made.json()['id']}/feedback", headers=AUTH,
                       json={"answer": "A", "vote": "up"})
    assert voted.status_code == 201 and voted.json()["recorded"] == 2
    rows = table_rows(ok(cli("leaderboard", "--tag", "db", env=client_env(demo_server))))
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert (rows[0][1], rows[0][4], rows[0][5]) == ("demo/alpha", "2", "100%")  # answer A won both comparisons
    assert sorted((row[1], row[4], row[5]) for row in rows[1:]) == [("demo/beta", "1", "0%"), ("demo/gamma", "1", "0%")]
    assert all(re.fullmatch(r"-?\d+\.\d – -?\d+\.\d", row[3]) for row in rows)
    board = json.loads(ok(cli("leaderboard", "--json", "--tag", "db", env=client_env(demo_server))))
    assert board["tag"] == "db" and board["data"][0]["model"] == "demo/alpha" and board["data"][0]["win_rate"] == 1.0
    assert board["data"][0]["rating"] > board["data"][1]["rating"] and {r["games"] for r in board["data"][1:]} == {1}


# -- the same commands with --local: the app started in this process --------------------------------

def test_ask_demo_runs_in_this_process(local_env: Path) -> None:
    out = ok(cli("ask", "Which database should a new web app use?", "--demo"))
    check_ask_view(out)
    assert (local_env / "thinktank.db").exists()  # recorded in the local database, as serve would


def test_debate_local_writes_the_documents(local_env: Path, tmp_path: Path) -> None:
    out = ok(cli("debate", "Which database?", "--demo", "--rounds", "1", "--experts", "2", "--plan", "--out",
                 str(tmp_path / "plans")))
    assert "cost $" in out and (tmp_path / "plans" / "plan.md").read_text().startswith("# Plan")


def test_ask_several_or_no_ensembles_says_how_to_choose(local_env: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("models:\n  - {name: m1, provider: mock}\nensembles:\n  - {name: solo, members: [m1]}\n")
    r = cli("ask", "q", "--demo", "--config", str(cfg))
    assert r.exit_code == 2 and "choose one with --ensemble: solo, demo-council." in r.stderr
    cfg.write_text("models:\n  - {name: m1, provider: mock}\n")
    r = cli("ask", "q", "--config", str(cfg))
    assert r.exit_code == 2
    assert "No ensembles are configured: add 'ensembles:' to the config file, or try --demo." in r.stderr


def test_ask_run_that_fails_exits_1_with_its_error(local_env: Path, tmp_path: Path) -> None:
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


def test_leaderboard_local_empty_says_how_to_vote(local_env: Path) -> None:
    r = cli("leaderboard", "--local")
    assert ok(r).startswith("No votes yet.") and "POST /api/v1/runs/{id}/feedback" in r.stdout
    assert "No models are configured" not in r.stderr
    assert json.loads(ok(cli("leaderboard", "--local", "--json", "--tag", "x"))) == {"tag": "x", "data": []}
