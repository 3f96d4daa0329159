"""``thinktank eval answers`` for real: against the app started in this process (``--demo``, ``--config``) and
against ``thinktank serve`` in another process (a refused candidate, Ctrl-C)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from thinktank.cli.eval_progress import EvalProgress
from thinktank.cli.eval_report import CANDIDATE_FIELDS, PAIR_FIELDS
from thinktank.cli.run_views import RunEvent

from ..cli.helpers import ADMIN, cli, client_env, ok, table_rows
from ..fakes.process import Server, clean_env

AUTH = {"Authorization": f"Bearer {ADMIN}"}

CONFIG = """
models:
  - name: good
    provider: mock
    options:
      rules:
        - {match: "capital of France", reply: "The capital of France is Paris."}
        - {match: "capital of Italy", reply: "Rome is the capital of Italy."}
        - {match: "2 \\\\+ 2", reply: "2 + 2 = 4"}
  - {name: wrong, provider: mock, options: {replies: ["London, I believe."]}}
  - name: judge
    provider: mock
    options:
      rules:
        - {match: "Response A:\\\\s*`{3,}\\\\s*[^`]*(?:Paris|Rome|= 4)", reply: '{"reason": "right", "winner": "A"}'}
        - {match: "Response B:\\\\s*`{3,}\\\\s*[^`]*(?:Paris|Rome|= 4)", reply: '{"reason": "right", "winner": "B"}'}
        - {match: "Response A", reply: '{"winner": "tie"}'}
  - {name: pricey, provider: mock, input_price: 100000, output_price: 100000, options: {replies: ["Paris"]}}
  - {name: "=[red]odd", provider: mock, options: {replies: ["Paris"]}}
"""

LINES = [
    '{"id": "fr", "question": "What is the capital of France?", "reference": "Paris", "tags": ["geo"], '
    '"checks": [{"type": "contains", "value": "Paris"}]}',
    '{"id": "broken", "question": ',
    '{"id": "it", "question": "What is the capital of Italy?", "reference": "Rome", '
    '"checks": [{"type": "contains", "value": "Rome"}]}',
    '{"id": "sum", "question": "What is 2 + 2?", "reference": "4", "checks": [{"type": "numeric", "value": 4}]}',
]


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process's environment without thinktank's or any provider's settings, a data directory of the test's
    own, and a config (``c.yaml``) and a dataset with a broken second line (``qa.jsonl``) in ``tmp_path``."""
    for name in list(os.environ):
        if name.startswith("THINKTANK_") or name.endswith("_API_KEY"):
            monkeypatch.delenv(name)
    for name, value in clean_env(tmp_path).items():
        if name.startswith(("THINKTANK_", "OLLAMA_", "HOME")):
            monkeypatch.setenv(name, value)
    (tmp_path / "c.yaml").write_text(CONFIG, encoding="utf-8")
    (tmp_path / "qa.jsonl").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return tmp_path


def evaluate(here: Path, *args: str) -> tuple[str, str]:
    """``eval answers`` of ``good`` against ``wrong`` judged by ``judge``, on the app started here: (stdout, stderr);
    the broken line is reported, the rest evaluated."""
    r = cli("eval", "answers", "--config", str(here / "c.yaml"), "--dataset", str(here / "qa.jsonl"),
            "--candidates", "good,wrong", "--judge", "judge", *args)
    out = ok(r)
    assert "qa.jsonl:2: " in r.stderr and "3 items (1 line skipped)" in r.stderr
    return out, r.stderr


def test_demo_shows_the_progress_the_summary_and_the_pairs(here: Path) -> None:
    r = cli("eval", "answers", "--demo", "--concurrency", "8")
    out = ok(r)
    assert re.search(r"dataset eds_\w+: 36 items\n", r.stderr)
    assert re.search(r"evaluating 36 items × 2 candidates \(demo/quick, ensemble/demo-council\) · judged by "
                     r"demo/judge · run run_\w+", r.stderr)
    assert "[36/36] $0.000000 · demo/quick: 36 answered, " in r.stderr
    rows = table_rows(out)
    summary, pairs = rows[:2], rows[2:]
    assert [row[:2] for row in summary] == [["1", "ensemble/demo-council"], ["2", "demo/quick"]]
    for row in summary:
        assert re.fullmatch(r"\d+%", row[2]), row
        win, low, high = map(int, re.fullmatch(r"(\d+)% \[(\d+)–(\d+)%\]", row[3]).groups())  # type: ignore[union-attr]
        assert low <= win <= high
        rating, low, high = map(int, re.fullmatch(r"(\d+) \[(\d+)–(\d+)\]", row[4]).groups())  # type: ignore[union-attr]
        assert low <= rating <= high
        assert re.fullmatch(r"[\d,]+ / [\d,]+", row[5]) and row[6:] == ["$0", "$0"]  # mock models are free
    assert summary[0][2] == "92%"  # the council misses 2 checks (and a latency ceiling)
    # The demo judge prefers the answer with the reference's key fact: the council's 10 times, quick's once; the
    # other 25 times it picks whichever is shown first, which judging in both orders turns into ties.
    assert pairs == [["demo/quick", "ensemble/demo-council", "36", "1 / 10 / 25", pairs[0][4]]]
    assert "25 order-dependent verdicts counted as ties, 0 excluded" in out
    assert re.search(r"36/36 items answered · cost \$0 · run run_\w+ · completed\n$", out)


def test_json_is_the_whole_result_and_the_bad_line_is_left_out(here: Path) -> None:
    out, _ = evaluate(here, "--format", "json")
    result = json.loads(out)
    assert result["status"] == "completed" and result["id"].startswith("run_")
    assert [i["id"] for i in result["items"]] == ["fr", "it", "sum"]
    per = {c["candidate"]: c for c in result["summary"]["per_candidate"]}
    assert (per["good"]["pass_rate"], per["wrong"]["pass_rate"]) == (1.0, 0.0)
    assert (per["good"]["rank"], per["wrong"]["rank"]) == (1, 2)
    assert result["summary"]["pairs"][0] | {"ci": None} == {
        "a": "good", "b": "wrong", "n": 3, "wins": 3, "losses": 0, "ties": 0, "win_rate": 1.0, "ci": None}
    answers = result["items"][0]["answers"]
    assert answers["wrong"]["text"] == "London, I believe." and answers["wrong"]["checks"][0]["passed"] is False


def test_rejudge_reuses_the_answers_without_asking_again(here: Path) -> None:
    first = json.loads(evaluate(here, "--format", "json", "--candidates", "pricey,wrong")[0])
    assert first["cost_usd"] > 0
    r = cli("eval", "answers", "--config", str(here / "c.yaml"), "--rejudge", first["id"], "--judge", "judge",
            "--format", "json")
    again = json.loads(ok(r))
    assert "dataset" not in r.stderr  # nothing uploaded
    assert again["id"] != first["id"] and again["summary"]["candidates"] == ["pricey", "wrong"]
    assert all(a["cached"] for item in again["items"] for a in item["answers"].values())
    assert [item["answers"]["pricey"]["text"] for item in again["items"]] == ["Paris"] * 3
    assert again["cost_usd"] == 0  # only the judge (a free mock) was asked: no answer is paid twice


def test_csv_holds_the_candidates_then_the_pairs(here: Path) -> None:
    out, _ = evaluate(here, "--format", "csv")
    rows = list(csv.reader(io.StringIO(out)))
    blank = rows.index([])
    candidates, pairs = rows[:blank], rows[blank + 1:]
    assert candidates[0] == list(CANDIDATE_FIELDS) and pairs[0] == list(PAIR_FIELDS)
    by_name = {row[0]: dict(zip(CANDIDATE_FIELDS, row, strict=True)) for row in candidates[1:]}
    assert set(by_name) == {"good", "wrong"}
    assert (by_name["good"]["pass_rate"], by_name["good"]["rank"], by_name["good"]["answered"]) == ("1.0", "1", "3")
    assert float(by_name["good"]["rating"]) > float(by_name["wrong"]["rating"])
    assert float(by_name["good"]["win_ci_low"]) <= float(by_name["good"]["win_rate"]) == 1.0
    assert [dict(zip(PAIR_FIELDS, row, strict=True))["wins"] for row in pairs[1:]] == ["3"]


def test_markdown_holds_the_candidates_and_the_pairs_tables(here: Path) -> None:
    out, _ = evaluate(here, "--format", "markdown")
    tables = [[[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines() if line.startswith("|")]
              for block in out.split("\n\n") if block.startswith("|")]
    assert len(tables) == 2
    candidates, pairs = tables
    assert candidates[0][0] == "Candidate" and [row[0] for row in candidates[2:]] == ["good", "wrong"]
    assert candidates[2][1] == "100.0 %" and candidates[3][1] == "0.0 %"
    assert pairs[2][:6] == ["good", "wrong", "3", "3", "0", "0"]


def test_the_table_goes_to_a_file_with_output(here: Path) -> None:
    out, err = evaluate(here, "--output", str(here / "result.txt"))
    assert out == "" and f"wrote {here / 'result.txt'}" in err
    rows = table_rows((here / "result.txt").read_text(encoding="utf-8"))
    assert [row[:3] for row in rows[:2]] == [["1", "good", "100%"], ["2", "wrong", "0%"]]
    assert rows[2][:4] == ["good", "wrong", "3", "3 / 0 / 0"]


def test_names_are_printed_as_they_are_and_a_csv_cell_is_never_a_formula(here: Path) -> None:
    args = ("eval", "answers", "--config", str(here / "c.yaml"), "--dataset", str(here / "qa.jsonl"),
            "--candidates", "=[red]odd,good", "-q")
    r = cli(*args)
    assert [row[1] for row in table_rows(ok(r))] == ["=[red]odd", "good"]  # not rich markup
    assert r.stderr.startswith("qa.jsonl:2: ") and "dataset" not in r.stderr  # -q: the refused line only
    rows = list(csv.reader(io.StringIO(ok(cli(*args, "--format", "csv")))))
    assert [row[0] for row in rows[1:]] == ["'=[red]odd", "good"]


def test_a_budget_reached_ends_with_status_1_and_says_so(here: Path) -> None:
    r = cli("eval", "answers", "--config", str(here / "c.yaml"), "--dataset", str(here / "qa.jsonl"),
            "--candidates", "pricey", "--max-cost", "0.000001", "--concurrency", "1", "-q")
    assert r.exit_code == 1, (r.stdout, r.stderr)
    assert "error: the evaluation ended budget_exceeded" in r.stderr


def test_bad_files_are_refused_before_anything_runs(here: Path) -> None:
    (here / "latin1.jsonl").write_bytes('{"question": "Où est la gare ?"}\n'.encode("latin-1"))
    r = cli("eval", "answers", "--config", str(here / "c.yaml"), "--dataset", str(here / "latin1.jsonl"),
            "--candidates", "good")
    assert r.exit_code == 2 and "latin1.jsonl: not UTF-8 text (byte 16)" in r.stderr
    (here / "checks.json").write_text("{not json", encoding="utf-8")
    r = cli("eval", "answers", "--config", str(here / "c.yaml"), "--dataset", str(here / "qa.jsonl"),
            "--candidates", "good", "--checks", str(here / "checks.json"))
    assert r.exit_code == 2 and "checks.json: not a JSON list of checks" in r.stderr
    (here / "none.jsonl").write_text('{"id": 3}\n', encoding="utf-8")
    r = cli("eval", "answers", "--config", str(here / "c.yaml"), "--dataset", str(here / "none.jsonl"),
            "--candidates", "good")
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and "line 1" in r.stderr
    r = cli("eval", "answers", "--config", str(here / "c.yaml"), "--dataset", str(here / "qa.jsonl"))
    assert r.exit_code == 2 and "--candidates" in r.stderr


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """``thinktank serve --demo`` in another process, with the admin key ``ADMIN``."""
    s = Server(["--demo"], {**clean_env(tmp_path / "server"), "THINKTANK_ADMIN_KEY": ADMIN})
    yield s
    s.stop()


def api(server: Server, path: str) -> Any:
    r = httpx.get(server.url + path, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_an_unknown_candidate_exits_2_with_the_servers_message_and_nothing_spent(
        server: Server, tmp_path: Path) -> None:
    (tmp_path / "qa.jsonl").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    r = cli("eval", "answers", "--dataset", str(tmp_path / "qa.jsonl"), "--candidates", "demo/quick,nope",
            "--judge", "demo/judge", env=client_env(server))
    assert r.exit_code == 2 and r.stdout == ""
    assert "error: candidates: the model 'nope' does not exist here" in r.stderr
    assert api(server, "/api/v1/eval/runs")["data"] == []
    assert api(server, "/api/v1/eval/datasets")["data"] == []  # the upload made for it is taken back
    assert api(server, "/api/v1/usage")["data"] == []  # no model was asked anything


def test_the_live_view_on_a_terminal_follows_a_real_runs_events(server: Server, tmp_path: Path) -> None:
    (tmp_path / "qa.jsonl").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    r = cli("eval", "answers", "--dataset", str(tmp_path / "qa.jsonl"), "--candidates", "demo/quick,demo/fast",
            "--judge", "demo/judge", "--format", "json", env=client_env(server))
    run_id = json.loads(ok(r))["id"]
    events = api(server, f"/api/v1/runs/{run_id}/events?format=json")["data"]
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100, color_system=None)
    with EvalProgress(console, run_id) as view:
        assert view.live_view
        for event in events:
            view.show(RunEvent(event["seq"], event["type"], event["data"]))
    last = screen.getvalue().split("evaluation ")[-1]  # the view's last drawing
    assert last.startswith(f"{run_id}  ·  judged by demo/judge") and "3/3 items" in last and "3 verdicts" in last
    rows = {line.split()[0]: line.split()[1:] for line in last.splitlines() if line.strip().startswith("demo/")}
    assert rows == {"demo/quick": ["3", "0"], "demo/fast": ["3", "0"]}  # answered, passed: neither knows these


def test_ctrl_c_cancels_the_run_on_the_server_and_exits_130(server: Server, tmp_path: Path) -> None:
    env = {**clean_env(tmp_path), **client_env(server)}
    proc = subprocess.Popen([sys.executable, "-m", "thinktank", "eval", "answers", "--dataset", _sample_path(),
                             "--candidates", "demo/quick,ensemble/demo-council", "--judge", "demo/judge",
                             "--concurrency", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("["):  # "[n/36] ...": an item is done
            break
    started = re.search(r"run (run_\w+)", "".join(seen))
    assert started is not None, "".join(seen)
    run_id = started.group(1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert f"interrupted: run {run_id} cancelled" in err and out == ""
    record = api(server, f"/api/v1/eval/runs/{run_id}")
    assert record["status"] == "cancelled"
    assert 1 <= len(record["result"]["items"]) < 36  # what finished is kept


def _sample_path() -> str:
    from importlib.resources import files

    return str(files("thinktank").joinpath("evals/samples/qa.jsonl"))
