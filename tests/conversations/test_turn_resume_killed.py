"""A thread turn whose ``thinktank serve`` is killed (``kill -9``) in the middle of its answer is finished by
another server on the same database (PostgreSQL, and SQLite with both servers on one file): a client that
streamed it from the dead server reconnects to the other with ``Last-Event-ID`` and gets a ``restart``, the new
answer and the stored message, each event once; the thread has one answer to the message, asked with the same
prompt and paid under one new record of usage. A turn whose key was revoked meanwhile ends with an error; a turn
answered by an ensemble waits for that run to be taken up and stores its answer without asking it again."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select

from thinktank.store.db import Database
from thinktank.store.tables import ThreadTurn, UsageRow

from ..deliberation.resume_upstream import PanelUpstream, panel_upstream
from ..deliberation.resume_upstream import config as panel_config
from ..fakes.process import Server, run
from .turn_upstream import DRAFT, FINAL, TurnUpstream, config, turn_upstream

ADMIN = "tt-turns-admin-0123456789"
H = {"Authorization": f"Bearer {ADMIN}"}
ANSWER = "".join(FINAL)


@dataclass
class Sse:
    id: int
    event: str
    data: dict[str, Any]


@pytest.fixture
def upstream() -> Iterator[TurnUpstream]:
    with turn_upstream() as fake:
        yield fake


def _env(env: dict[str, str], db_url: str, tmp_path: Path, config_text: str) -> dict[str, str]:
    cfg = tmp_path / "turns.yaml"
    cfg.write_text(config_text)
    return {**env, "THINKTANK_CONFIG": str(cfg), "THINKTANK_ADMIN_KEY": ADMIN, "THINKTANK_DATABASE_URL": db_url,
            "THINKTANK_RUN_STALE_AFTER": "2"}


@pytest.fixture
def turn_env(env: dict[str, str], db_url: str, tmp_path: Path, upstream: TurnUpstream) -> dict[str, str]:
    return _env(env, db_url, tmp_path, config(upstream.url))


def _events(lines: Iterator[str]) -> Iterator[Sse]:
    at, name = 0, ""
    for line in lines:
        if line.startswith("id: "):
            at = int(line[4:])
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            yield Sse(at, name, orjson.loads(line[6:]))


def _kill(server: Server) -> None:
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=10)


def _wait(what: str, until: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = until()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"waited {timeout} s for {what}")


def _start_and_kill(server: Server, thread_id: str, headers: dict[str, str], content: str,
                    enough: Callable[[list[Sse]], bool], before_kill: Callable[[], None] | None = None) -> list[Sse]:
    """Stream a turn from ``server`` until ``enough`` of it was seen, then kill the server: the events seen."""
    seen: list[Sse] = []
    with httpx.stream("POST", f"{server.url}/api/v1/threads/{thread_id}/messages", headers=headers, timeout=30,
                      json={"content": content, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        for event in _events(r.iter_lines()):
            seen.append(event)
            if enough(seen):
                break
        if before_kill is not None:
            before_kill()
        _kill(server)
    return seen


def _follow(server: Server, thread_id: str, headers: dict[str, str], after: int) -> list[Sse]:
    """Every event the turn's stream sends on ``server`` after ``Last-Event-ID: after``, to its end."""
    with httpx.stream("GET", f"{server.url}/api/v1/threads/{thread_id}/turn/events", timeout=90,
                      headers={**headers, "Last-Event-ID": str(after)}) as r:
        assert r.status_code == 200, r.read()
        return list(_events(r.iter_lines()))


def _messages(server: Server, thread_id: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    r = httpx.get(f"{server.url}/api/v1/threads/{thread_id}/messages", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


def _key(env: dict[str, str], name: str) -> tuple[str, str]:
    made = run(["keys", "create", "--name", name], env)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip(), made.stderr.split("(key ", 1)[1].split(",", 1)[0]


def _query(db_url: str, query: Any) -> list[Any]:
    async def read() -> list[Any]:
        db = Database(db_url)
        try:
            async with db.engine.connect() as conn:
                return list((await conn.execute(query)).all())
        finally:
            await db.close()

    return asyncio.run(read())


def _check_stream(rest: list[Sse], last_seen: int) -> list[Sse]:
    """The rest of a taken-up turn's stream: what the dead server stored after the last event seen, a restart
    (after the last event stored), then the new answer and its end; every number once, rising. What follows
    the restart."""
    kinds = [e.event for e in rest]
    assert kinds.count("restart") == 1, kinds
    at = kinds.index("restart")
    restart = rest[at]
    assert [e.id for e in rest[:at]] == list(range(last_seen + 1, restart.data["resumes_after"] + 1))
    assert restart.id > max(last_seen, restart.data["resumes_after"])
    ids = [e.id for e in rest[at:]]
    assert ids == list(range(restart.id, restart.id + len(ids)))
    return rest[at + 1:]


def test_a_turn_whose_server_was_killed_is_finished_by_another_one(
    server: type[Server], turn_env: dict[str, str], upstream: TurnUpstream, db_url: str,
) -> None:
    key, _ = _key(turn_env, "chat")
    headers = {"Authorization": f"Bearer {key}"}
    b = server([], turn_env)
    a = server([], turn_env)
    persona = httpx.post(f"{b.url}/api/v1/personas", headers=headers, timeout=10,
                         json={"name": "Guide", "system_prompt": "You are a patient guide to the valley."}).json()
    thread = httpx.post(f"{b.url}/api/v1/threads", headers=headers, timeout=10,
                        json={"model": "writer", "persona_id": persona["id"]}).json()
    first = httpx.post(f"{b.url}/api/v1/threads/{thread['id']}/messages", headers=headers, timeout=30,
                       json={"content": "Where is the river?"})
    assert first.status_code == 200, first.text

    upstream.slow_next = True
    seen = _start_and_kill(a, thread["id"], headers, "And where is the bridge?",
                           lambda events: sum(e.event == "delta" for e in events) >= 4)
    assert [e.id for e in seen] == list(range(1, len(seen) + 1))
    assert all(e.data["content"] in DRAFT for e in seen if e.event == "delta")

    rest = _follow(b, thread["id"], headers, seen[-1].id)
    after = _check_stream(rest, seen[-1].id)
    assert next(e for e in rest if e.event == "restart").data["reason"] == "interrupted"
    assert "".join(e.data["content"] for e in after if e.event == "delta") == ANSWER
    assert rest[-1].event == "message" and rest[-1].data["message"]["content"] == ANSWER
    assert rest[-1].data["message"]["finish_reason"] == "stop"

    stored = _messages(b, thread["id"], headers)
    assert [(m["role"], m["content"]) for m in stored] == [
        ("user", "Where is the river?"), ("assistant", ANSWER), ("user", "And where is the bridge?"),
        ("assistant", ANSWER)]
    # Asked again with the prompt the turn had: persona, history, the message.
    chats = upstream.chats()
    assert len(chats) == 3 and chats[2].messages == chats[1].messages
    assert [m["role"] for m in chats[1].messages] == ["system", "user", "assistant", "user"]
    assert "patient guide" in chats[1].messages[0]["content"]
    # One record of usage for the answer's resumed part (the dead server recorded nothing of its part).
    usage = select(UsageRow.model, UsageRow.status, UsageRow.cost_usd).where(UsageRow.model == "writer")
    rows = _wait("the resumed turn's usage",
                 lambda: (found := _query(db_url, usage.order_by(UsageRow.ts))) and len(found) >= 2 and found)
    assert len(rows) == 2 and [r[1] for r in rows] == [200, 200]
    assert rows[1][2] == pytest.approx(stored[3]["cost_usd"]) and rows[1][2] > 0

    # From the start, after the turn: every stored event once (the dead server's, the restart, the new answer).
    replay = _follow(b, thread["id"], headers, 0)
    ids = [e.id for e in replay]
    assert ids == sorted(set(ids)) and replay[-1].event == "message"
    assert [e.event for e in replay].count("restart") == 1
    turn = _query(db_url, select(ThreadTurn.attempts, ThreadTurn.ended_at))
    assert len(turn) == 1 and turn[0][0] == 1 and turn[0][1] is not None


def test_a_turn_whose_key_was_revoked_meanwhile_ends_with_an_error(
    server: type[Server], turn_env: dict[str, str], upstream: TurnUpstream,
) -> None:
    key, key_id = _key(turn_env, "ci")
    other, _ = _key(turn_env, "viewer")  # the same user's other key
    headers, viewer = {"Authorization": f"Bearer {key}"}, {"Authorization": f"Bearer {other}"}
    b = server([], turn_env)
    a = server([], turn_env)
    thread = httpx.post(f"{a.url}/api/v1/threads", headers=headers, timeout=10, json={"model": "writer"}).json()
    upstream.slow_next = True

    def revoke() -> None:  # while the server answers: it does not look again, the next one does
        assert run(["keys", "revoke", key_id], turn_env).returncode == 0

    seen = _start_and_kill(a, thread["id"], headers, "Tell me a long story.",
                           lambda events: sum(e.event == "delta" for e in events) >= 2, before_kill=revoke)
    rest = _follow(b, thread["id"], viewer, seen[-1].id)
    assert [e.event for e in _check_stream(rest, seen[-1].id)] == ["error"]
    error = rest[-1].data["error"]
    assert error["code"] == "key_revoked" and "revoked" in error["message"]
    assert _messages(b, thread["id"], viewer) == []  # nothing stored for it
    assert len(upstream.chats()) == 1  # not asked again
    again = httpx.post(f"{b.url}/api/v1/threads/{thread['id']}/messages", headers=viewer, timeout=30,
                       json={"content": "Then a short one."})
    assert again.status_code == 200, again.text  # the thread is free again


def test_a_server_that_only_stalled_finds_its_turn_taken_up_and_stores_nothing(
    server: type[Server], turn_env: dict[str, str], upstream: TurnUpstream,
) -> None:
    key, _ = _key(turn_env, "chat")
    headers = {"Authorization": f"Bearer {key}"}
    b = server([], turn_env)
    a = server([], turn_env)
    thread = httpx.post(f"{a.url}/api/v1/threads", headers=headers, timeout=10, json={"model": "writer"}).json()
    upstream.slow_next = True
    seen: list[Sse] = []
    with httpx.stream("POST", f"{a.url}/api/v1/threads/{thread['id']}/messages", headers=headers, timeout=30,
                      json={"content": "And where is the bridge?", "stream": True}) as r:
        for event in _events(r.iter_lines()):
            seen.append(event)
            if sum(e.event == "delta" for e in seen) >= 3:
                break
        a.proc.send_signal(signal.SIGSTOP)  # frozen: it shows no sign of life, and its turn looks dead
    try:
        rest = _follow(b, thread["id"], headers, seen[-1].id)
    finally:
        a.proc.send_signal(signal.SIGCONT)
    assert rest[-1].event == "message" and rest[-1].data["message"]["content"] == ANSWER
    # Woken up, it finds at its next sign of life that the turn is another's: it lets go of its upstream call.
    _wait("the stalled server to drop its call", lambda: upstream.fake is not None and upstream.fake.cancelled >= 1)
    assert [(m["role"], m["content"]) for m in _messages(a, thread["id"], headers)] == [
        ("user", "And where is the bridge?"), ("assistant", ANSWER)]
    on_a = _follow(a, thread["id"], headers, seen[-1].id)  # (its own copy of the turn is gone: the stored one)
    assert [(e.id, e.event) for e in on_a] == [(e.id, e.event) for e in rest]
    err = a.stop()
    assert "was taken up by another process" in err
    assert [(m["role"], m["content"]) for m in _messages(b, thread["id"], headers)] == [
        ("user", "And where is the bridge?"), ("assistant", ANSWER)]


@pytest.fixture
def panel() -> Iterator[PanelUpstream]:
    with panel_upstream() as fake:
        yield fake


def test_a_turn_answered_by_an_ensemble_waits_for_the_run_and_stores_its_answer(
    server: type[Server], env: dict[str, str], db_url: str, tmp_path: Path, panel: PanelUpstream,
) -> None:
    run_env = _env(env, db_url, tmp_path, panel_config(panel.url) + "memory: {enabled: false}\n")
    panel.hold = lambda model, _prompt: model == "gamma"  # its first answer never comes
    b = server([], run_env)
    a = server([], run_env)
    thread = httpx.post(f"{a.url}/api/v1/threads", headers=H, timeout=10, json={"model": "ensemble/council"}).json()

    def run_id_stored() -> str | None:
        found = _query(db_url, select(ThreadTurn.run_id))
        return found[0][0] if found and found[0][0] else None

    def answered(run_id: str) -> int:  # (listing the runs saves those under way)
        assert httpx.get(f"{a.url}/api/v1/runs", headers=H, timeout=10).status_code == 200
        calls = httpx.get(f"{a.url}/api/v1/runs/{run_id}", headers=H, timeout=10).json()["calls"]
        return sum(1 for c in calls if c["stage"] == "answer" and c["answer"])

    def saved() -> None:
        run_id = _wait("the turn's run stored with it", run_id_stored)
        _wait("two members' answers saved, the third pending", lambda: len(panel.held) == 1 and answered(run_id) == 2)

    seen = _start_and_kill(a, thread["id"], H, "Where does the river cross the valley?", lambda _: True,
                           before_kill=saved)
    run_id = run_id_stored()
    rest = _follow(b, thread["id"], H, seen[-1].id)
    _check_stream(rest, seen[-1].id)
    answer = "The council agrees: the river crosses the valley."
    assert rest[-1].event == "message", rest[-1].data
    message = rest[-1].data["message"]
    assert message["content"] == answer and message["context"]["run_id"] == run_id
    record = httpx.get(f"{b.url}/api/v1/runs/{run_id}", headers=H, timeout=10).json()
    assert record["status"] == "completed" and record["result"]["answer"] == answer
    assert message["cost_usd"] == pytest.approx(record["cost_usd"])
    # The run went on from its checkpoint: only the member in flight was asked again, and no second run began.
    assert [panel.count(m) for m in ("alpha", "beta", "gamma", "judge", "chair")] == [1, 1, 2, 3, 1]
    stored = _messages(b, thread["id"], H)
    assert [(m["role"], m["content"]) for m in stored] == [
        ("user", "Where does the river cross the valley?"), ("assistant", answer)]
