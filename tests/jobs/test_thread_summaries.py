"""A thread's rolling summary written ahead of need in another process: a ``thinktank serve`` that runs no jobs
(``THINKTANK_WORKER=false``) queues ``thread.summarise`` on the PostgreSQL queue after the turn that brings the
history near its room, ``thinktank worker`` runs it, and the next turn through the server finds the summary
stored and folds nothing itself."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import text

from thinktank.store.db import Database

from ..conversations.turn_upstream import FINAL, turn_upstream
from ..fakes.process import Server

ADMIN = "tt-summaries-admin-0123456789"
H = {"Authorization": f"Bearer {ADMIN}"}
FILLER = " It matters because of many reasons that I would like to explore with you at some length today."


def _config(url: str) -> str:
    """``writer`` answers the turns (480 tokens of context), ``summ`` writes the summaries."""
    return f"""
models:
  - {{name: writer, provider: openai, model: writer, base_url: '{url}/v1', api_key: x, context_window: 480}}
  - {{name: summ, provider: openai, model: summ, base_url: '{url}/v1', api_key: x, input_price: 1000,
      output_price: 1000}}
router: {{num_retries: 0}}
conversations: {{reply_tokens: 40, summary_tokens: 60, summary_model: summ}}
memory: {{enabled: false}}
"""


def _query(db_url: str, sql: str, **params: Any) -> list[Any]:
    async def read() -> list[Any]:
        db = Database(db_url)
        try:
            async with db.engine.connect() as conn:
                return list((await conn.execute(text(sql), params)).all())
        finally:
            await db.close()

    return asyncio.run(read())


def _until(found: Callable[[], Any], seconds: float) -> Any:
    """What ``found`` returns once it is truthy, or None after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = found()
        if got:
            return got
        time.sleep(0.05)
    return None


def _jobs(pg_url: str) -> list[str]:
    return [r[0] for r in _query(pg_url, "SELECT status FROM procrastinate_jobs WHERE task_name = 'thread.summarise'")]


def test_the_summary_job_of_a_server_runs_in_a_worker_process(
    pg_url: str, server: type[Server], env: dict[str, str], tmp_path: Path,
) -> None:
    with turn_upstream() as upstream:
        cfg = tmp_path / "threads.yaml"
        cfg.write_text(_config(upstream.url))
        shared = {**env, "THINKTANK_CONFIG": str(cfg), "THINKTANK_DATABASE_URL": pg_url, "THINKTANK_ADMIN_KEY": ADMIN,
                  "THINKTANK_LOG_LEVEL": "warning"}
        web = server([], {**shared, "THINKTANK_WORKER": "false"})
        r = httpx.post(web.url + "/api/v1/threads", headers=H, json={"model": "writer"}, timeout=10)
        assert r.status_code == 201, r.text
        thread = r.json()["id"]
        for i in range(1, 8):  # until a turn queues the summary (it is queued once the turn has answered)
            r = httpx.post(web.url + f"/api/v1/threads/{thread}/messages", headers=H, timeout=30,
                           json={"content": f"Tell me about topic-{i}.{FILLER}"})
            assert r.status_code == 200, r.text
            if _until(lambda: _jobs(pg_url), 2.0):
                break
        else:
            raise AssertionError("no summary job was queued")
        assert _jobs(pg_url) == ["todo"]  # nobody runs jobs yet: nothing is written
        assert _query(pg_url, "SELECT id FROM thread_summaries") == []
        assert not [a for a in upstream.asked if a.model == "summ"]

        worker = subprocess.Popen([sys.executable, "-m", "thinktank", "worker", "--concurrency", "2"], env=shared,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            assert _until(lambda: _jobs(pg_url) == ["succeeded"], 60.0), _jobs(pg_url)
        finally:
            worker.send_signal(signal.SIGTERM)
            _, err = worker.communicate(timeout=30)
        assert worker.returncode == 0, err
        [(through, content, model)] = _query(pg_url, "SELECT through_seq, content, model FROM thread_summaries")
        assert model == "summ" and content == "".join(FINAL).strip() and through >= 2
        assert len([a for a in upstream.asked if a.model == "summ"]) == 1
        [(user_id,)] = _query(pg_url, "SELECT user_id FROM threads")
        rows = _query(pg_url, "SELECT user_id, model, status, cost_usd FROM usage WHERE model = 'summ'")
        assert [(u, m, s) for u, m, s, _ in rows] == [(user_id, "summ", 200)] and rows[0][3] > 0

        # the next turn, through the server: the summary stands in for the folded messages; nothing folded now
        with httpx.stream("POST", web.url + f"/api/v1/threads/{thread}/messages", headers=H, timeout=30,
                          json={"content": "And what follows from all that?", "stream": True}) as s:
            assert s.status_code == 200
            kinds = [orjson.loads(line[6:]).get("type") for line in s.iter_lines() if line.startswith("data: {")]
        assert "summary" not in kinds and kinds[-1] == "message", kinds
        system = upstream.chats()[-1].messages[0]
        assert system["role"] == "system" and f"first {through} messages" in system["content"]
        assert "".join(FINAL).strip() in system["content"]
        assert len([a for a in upstream.asked if a.model == "summ"]) == 1
