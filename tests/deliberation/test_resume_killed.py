"""Runs survive their server: an ensemble or a debate whose ``thinktank serve`` is killed (``kill -9``) in the
middle goes on in the next server, on SQLite and on PostgreSQL. What finished is not asked again (the upstream
counts its requests), the run's cost is the sum of its calls, its events have no seq twice, and a follower that
reconnects with ``Last-Event-ID`` gets the rest exactly once. A run whose key was revoked meanwhile fails,
saying so."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from ..fakes.process import Server, run
from .resume_upstream import PanelUpstream, config

ADMIN = "tt-resume-admin-0123456789"
H = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
def run_env(env: dict[str, str], db_url: str, tmp_path: Path, upstream: PanelUpstream) -> dict[str, str]:
    cfg = tmp_path / "runs.yaml"
    cfg.write_text(config(upstream.url))
    return {**env, "THINKTANK_CONFIG": str(cfg), "THINKTANK_ADMIN_KEY": ADMIN, "THINKTANK_DATABASE_URL": db_url,
            "THINKTANK_RUN_STALE_AFTER": "2"}


def _record(url: str, run_id: str, headers: dict[str, str] = H) -> dict[str, Any]:
    r = httpx.get(f"{url}/api/v1/runs/{run_id}", headers=headers, timeout=5)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _wait(what: str, until: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = until()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"waited {timeout} s for {what}")


def _events(url: str, run_id: str, headers: dict[str, str] = H) -> list[dict[str, Any]]:
    r = httpx.get(f"{url}/api/v1/runs/{run_id}/events", params={"format": "json"}, headers=headers, timeout=5)
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


@contextmanager
def _started(url: str, path: str, body: dict[str, Any], headers: dict[str, str] = H) -> Iterator[str]:
    """A run started with its events streamed (the stream ends when the server dies; the run does not)."""
    with httpx.stream("POST", f"{url}{path}", headers=headers, timeout=10, json={**body, "stream": True}) as r:
        assert r.status_code == 200
        yield r.headers["x-thinktank-run-id"]


def _kill_when_saved(server: Server, run_id: str, headers: dict[str, str] = H) -> int:
    """Write the run now (listing runs saves the live ones), kill the server: the last event it saved."""
    assert httpx.get(f"{server.url}/api/v1/runs", headers=headers, timeout=5).status_code == 200
    last = _events(server.url, run_id, headers)[-1]["seq"]
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=10)
    return int(last)


def _follow(url: str, run_id: str, after: int) -> list[tuple[int, str]]:
    """(seq, type) of every event the SSE stream sends after ``after`` (``Last-Event-ID``), up to ``done``."""
    got: list[tuple[int, str]] = []
    seq, name = 0, ""
    with httpx.stream("GET", f"{url}/api/v1/runs/{run_id}/events", timeout=60,
                      headers={**H, "Last-Event-ID": str(after)}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("id: "):
                seq = int(line[4:])
            elif line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                got.append((seq, name))
                if name == "done":
                    break
    return got


def _check_record(record: dict[str, Any], events: list[dict[str, Any]], last: int,
                  followed: list[tuple[int, str]]) -> None:
    assert record["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in record["calls"]))
    assert record["cost_usd"] > 0
    seqs = [c["seq"] for c in record["calls"]]
    assert len(seqs) == len(set(seqs))
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # no seq twice, none missing
    assert [t for _, t in followed].count("resumed") == 1
    assert followed == [(e["seq"], e["type"]) for e in events if e["seq"] > last]  # the rest, exactly once
    assert followed[-1][1] == "done"


def test_a_killed_ensemble_goes_on_without_asking_its_finished_members_again(
    server: type[Server], run_env: dict[str, str], upstream: PanelUpstream,
) -> None:
    upstream.hold = lambda model, _prompt: model == "gamma"  # its first answer never comes
    first = server([], run_env)
    body = {"ensemble": "council", "question": "Where does the river cross the valley?", "max_cost_usd": 5}
    with _started(first.url, "/api/v1/ensembles", body) as run_id:
        _wait("two members' answers, the third pending", lambda: len(upstream.held) == 1 and len(
            [c for c in _record(first.url, run_id)["calls"] if c["stage"] == "answer" and c["answer"]]) == 2)
        last = _kill_when_saved(first, run_id)

    second = server([], run_env)
    followed = _follow(second.url, run_id, last)
    record = _record(second.url, run_id)
    assert record["status"] == "completed", record["error"]
    assert record["result"]["answer"] == "The council agrees: the river crosses the valley."
    assert [a["model"] for a in record["result"]["answers"]] == ["alpha", "beta", "gamma"]
    # The finished members were asked once; the one in flight twice (its first answer died with the server).
    assert [upstream.count(m) for m in ("alpha", "beta", "gamma", "judge", "chair")] == [1, 1, 2, 3, 1]
    answered = [c["model"] for c in record["calls"] if c["stage"] == "answer"]
    assert sorted(answered) == ["alpha", "beta", "gamma"]  # each answer once on the record, paid once
    events = _events(second.url, run_id)
    _check_record(record, events, last, followed)
    members = [e for e in events if e["type"] == "model_answered" and e["data"]["stage"] == "answer"]
    assert sorted(e["data"]["model"] for e in members) == ["alpha", "beta", "gamma"]
    assert [e["data"]["stage"] for e in events if e["type"] == "stage_started"] == ["answer", "rank", "synthesis"]
    assert [e["data"]["stage"] for e in events if e["type"] == "stage_finished"] == ["answer", "rank", "synthesis"]


def test_a_killed_debate_goes_on_from_the_round_it_was_in(
    server: type[Server], run_env: dict[str, str], upstream: PanelUpstream,
) -> None:
    # Expert b's second-round answer never comes; expert a's does.
    upstream.hold = lambda model, prompt: model == "expert-b" and "Your previous position" in prompt
    first = server([], run_env)

    def in_round_two(run_id: str) -> bool:
        calls = _record(first.url, run_id)["calls"]
        return len(upstream.held) == 1 and any(c["stage"] == "round 2" and c["model"] == "expert-a" and c["answer"]
                                               for c in calls)

    body = {"debate": "panel", "question": "Where should the valley be crossed?"}
    with _started(first.url, "/api/v1/debates", body) as run_id:
        _wait("round 1 over, round 2 half answered", lambda: in_round_two(run_id))
        last = _kill_when_saved(first, run_id)

    second = server([], run_env)
    followed = _follow(second.url, run_id, last)
    record = _record(second.url, run_id)
    assert record["status"] == "completed", record["error"]
    result = record["result"]
    assert result["rounds_held"] == 2 and result["stopped"] == "max_rounds"
    assert result["answer"].startswith("## Answer\nBuild the bridge")
    assert [p["text"] for p in result["rounds"][1]["positions"]] == [
        "Having heard the others, expert-a now prefers a tunnel under the hills.",
        "Having heard the others, expert-b now prefers a tunnel under the hills."]
    assert result["rounds"][1]["follow_up"] == "What would the bridge cost?"
    # Round 1, its judge and the follow-up were not asked again; nor was expert a's round-2 answer.
    assert upstream.count("analyst") == 1
    assert [upstream.count(m, "Give your position") for m in ("expert-a", "expert-b")] == [1, 1]
    assert [upstream.count(m, "Your previous position") for m in ("expert-a", "expert-b")] == [1, 2]
    assert upstream.count("judge") == 2 and upstream.count("moderator") == 2  # follow-up, synthesis
    events = _events(second.url, run_id)
    _check_record(record, events, last, followed)
    rounds = [e["data"]["round"] for e in events if e["type"] == "round"]
    assert rounds == [1, 2]
    assert [e["data"]["stage"] for e in events if e["type"] == "stage_started"] == [
        "analysis", "panel", "round 1", "round 2", "synthesis"]


def test_a_run_whose_key_was_revoked_while_its_server_was_down_fails_saying_so(
    server: type[Server], run_env: dict[str, str], upstream: PanelUpstream,
) -> None:
    made = run(["keys", "create", "--name", "ci"], run_env)
    key = made.stdout.strip()
    key_id = made.stderr.split("(key ", 1)[1].split(",", 1)[0]
    headers = {"Authorization": f"Bearer {key}"}
    upstream.hold = lambda model, _prompt: model == "gamma"
    first = server([], run_env)
    body = {"ensemble": "council", "question": "Where does the river cross?"}
    with _started(first.url, "/api/v1/ensembles", body, headers) as run_id:
        _wait("the third member pending", lambda: len(upstream.held) == 1 and len(
            [c for c in _record(first.url, run_id, headers)["calls"] if c["answer"]]) == 2)
        _kill_when_saved(first, run_id, headers)
    assert run(["keys", "revoke", key_id], run_env).returncode == 0

    second = server([], run_env)
    record = _wait("the run to end", lambda: (rec := _record(second.url, run_id)) and rec["status"] != "running"
                   and rec)
    assert record["status"] == "failed"
    assert record["error"] == "The key or account that started the run was revoked, so it cannot go on."
    assert upstream.count("gamma") == 1 and upstream.count("judge") == 0  # nothing more was asked
    events = _events(second.url, run_id)
    assert [e["type"] for e in events[-2:]] == ["error", "done"]
    assert orjson.dumps(events).count(b"revoked") == 1


def test_a_server_that_only_stalled_finds_its_run_taken_up_and_stops_it(
    server: type[Server], run_env: dict[str, str], upstream: PanelUpstream,
) -> None:
    upstream.hold = lambda model, _prompt: model == "gamma"
    first = server([], run_env)
    body = {"ensemble": "council", "question": "Where does the river cross the valley?"}
    with _started(first.url, "/api/v1/ensembles", body) as run_id:
        _wait("the third member pending", lambda: len(upstream.held) == 1 and len(
            [c for c in _record(first.url, run_id)["calls"] if c["answer"]]) == 2)
        assert httpx.get(f"{first.url}/api/v1/runs", headers=H, timeout=5).status_code == 200  # saves it
        first.proc.send_signal(signal.SIGSTOP)  # frozen: it saves nothing more, and its run looks interrupted
        try:
            second = server([], run_env)
            record = _wait("the run to end", lambda: (rec := _record(second.url, run_id))["status"] != "running"
                           and rec)
            assert record["status"] == "completed", record["error"]
        finally:
            first.proc.send_signal(signal.SIGCONT)
        # Its next save finds the run is another process's: it stops it there, letting go of the held call.
        _wait("the stalled server to drop its call", lambda: upstream.dropped == 1)
    err = first.stop()
    assert f"run {run_id} was taken up by another process" in err
    after = _record(second.url, run_id)
    assert after == record  # the stalled server wrote nothing over it
    events = _events(second.url, run_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["type"] for e in events].count("done") == 1
    assert [upstream.count(m) for m in ("alpha", "beta", "gamma", "judge", "chair")] == [1, 1, 2, 3, 1]


def test_a_killed_ensemble_asks_a_member_that_is_a_run_again_and_that_child_run_ends(
    server: type[Server], run_env: dict[str, str], upstream: PanelUpstream,
) -> None:
    upstream.hold = lambda model, _prompt: model == "gamma"  # inside the child run (ensemble/inner)
    first = server([], run_env)
    body = {"ensemble": "outer", "question": "Where does the river cross the valley?"}
    with _started(first.url, "/api/v1/ensembles", body) as run_id:
        _wait("alpha's answer, the child run's gamma pending", lambda: len(upstream.held) == 1 and any(
            c["answer"] for c in _record(first.url, run_id)["calls"]))
        runs = httpx.get(f"{first.url}/api/v1/runs", params={"kind": "ensemble"}, headers=H, timeout=5).json()
        child = next(r["id"] for r in runs["data"] if r["name"] == "inner")
        _kill_when_saved(first, run_id)

    second = server([], run_env)
    record = _wait("the run to end", lambda: (rec := _record(second.url, run_id))["status"] != "running" and rec)
    assert record["status"] == "completed", record["error"]
    old = _wait("the old child run to end", lambda: (rec := _record(second.url, child))["status"] != "running"
                and rec)
    assert old["status"] == "failed"
    assert old["error"] == f"Interrupted: it is part of run {run_id}, which asks for it again when it goes on."
    member = next(a for a in record["result"]["answers"] if a["model"] == "ensemble/inner")
    assert member["run_id"] != child and _record(second.url, member["run_id"])["status"] == "completed"
    # alpha was not asked again; the child run was asked again as a whole (its own progress is not kept).
    assert [upstream.count(m) for m in ("alpha", "beta", "gamma")] == [1, 2, 2]
    assert record["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in record["calls"]))
