"""The queue end to end, with real ``thinktank`` processes on the real PostgreSQL: an ingestion of 200 documents
whose server is killed with SIGKILL mid-way is finished by another server, every document exactly once; and a
server that runs no jobs (``THINKTANK_WORKER=false``) leaves them to ``thinktank worker``."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
from sqlalchemy import text

from thinktank.store.db import Database

from ..fakes.process import Server

ADMIN = "tt-failover-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def _env(env: dict[str, str], pg_url: str, **extra: str) -> dict[str, str]:
    return {**env, "THINKTANK_DATABASE_URL": pg_url, "THINKTANK_ADMIN_KEY": ADMIN, "THINKTANK_JOB_STALL_AFTER": "3",
            "THINKTANK_LOG_LEVEL": "warning", **extra}


def _documents(n: int) -> dict[str, Any]:
    """``n`` documents of a few chunks each, all different."""
    words = ["tea", "kettle", "river", "engine", "garden", "ledger", "orbit", "violin", "harbour", "quartz"]
    docs = []
    for i in range(n):
        sentences = [f"Section {j} of note {i} says that the {words[(i + j) % 10]} number {i * 31 + j} matters "
                     f"because of {words[(i * j) % 10]} and {words[(i + 2 * j) % 10]}." for j in range(14)]
        docs.append({"name": f"notes/{i:03d}.md", "text": f"# Note {i}\n\n" + " ".join(sentences)})
    return {"documents": docs}


def _job(base: str, location: str) -> dict[str, Any]:
    r = httpx.get(base + location, headers=AUTH, timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _until(base: str, location: str, done: Any, seconds: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job = _job(base, location)
        if done(job):
            return job
        time.sleep(0.02)
    raise AssertionError(f"not within {seconds} s: {_job(base, location)}")


async def _counts(pg_url: str) -> tuple[int, int, int, int, int]:
    db = Database(pg_url)
    try:
        async with db.engine.connect() as conn:
            docs, sources, chunk_total = (await conn.execute(text(
                "SELECT count(*), count(DISTINCT source), coalesce(sum(chunk_count), 0) FROM kb_documents"))).one()
            chunks = (await conn.execute(text("SELECT count(*) FROM kb_chunks"))).scalar_one()
            added = (await conn.execute(text(
                "SELECT count(*) FROM kb_ingestion_items WHERE status = 'added'"))).scalar_one()
    finally:
        await db.close()
    return int(docs), int(sources), int(chunk_total), int(chunks), int(added)


def test_an_ingestion_whose_server_is_killed_is_finished_by_another_exactly_once(
    pg_url: str, server: type[Server], env: dict[str, str],
) -> None:
    shared = _env(env, pg_url)
    first = server([], shared)
    kb = httpx.post(first.url + "/api/v1/knowledge-bases", headers=AUTH, json={"name": "notes"}, timeout=10).json()
    r = httpx.post(first.url + f"/api/v1/knowledge-bases/{kb['id']}/documents?async=true", headers=AUTH,
                   json=_documents(200), timeout=60)
    assert r.status_code == 202, r.text
    location = r.headers["location"]
    before = _until(first.url, location, lambda j: j["done"] >= 20)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    assert before["status"] == "doing" and 0 < before["done"] < 200, before  # killed mid-way

    second = server([], shared)  # its worker finds the job left running by a dead one, and runs it again
    job = _until(second.url, location, lambda j: j["status"] in ("succeeded", "failed"))
    assert (job["status"], job["done"], job["total"], job["attempts"]) == ("succeeded", 200, 200, 2), job
    assert job["counts"] == {"added": 200, "replaced": 0, "unchanged": 0, "duplicate": 0, "failed": 0}
    assert sorted(d["source"] for d in job["data"]) == [f"notes/{i:03d}.md" for i in range(200)]
    docs, sources, chunk_total, chunks, added = asyncio.run(_counts(pg_url))
    assert (docs, sources, added) == (200, 200, 200)  # every document once
    assert chunks == chunk_total > 200  # no chunk of a document written twice, none lost


def test_a_server_that_runs_no_jobs_leaves_them_to_thinktank_worker(
    pg_url: str, server: type[Server], env: dict[str, str],
) -> None:
    shared = _env(env, pg_url)
    web = server([], {**shared, "THINKTANK_WORKER": "false"})
    kb = httpx.post(web.url + "/api/v1/knowledge-bases", headers=AUTH, json={"name": "notes"}, timeout=10).json()
    r = httpx.post(web.url + f"/api/v1/knowledge-bases/{kb['id']}/documents", headers=AUTH | {
        "Prefer": "respond-async"}, json=_documents(5), timeout=60)
    assert r.status_code == 202, r.text
    assert _job(web.url, r.headers["location"])["status"] == "queued"  # no process runs jobs yet
    worker = subprocess.Popen([sys.executable, "-m", "thinktank", "worker", "--concurrency", "2"], env=shared,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        job = _until(web.url, r.headers["location"], lambda j: j["status"] in ("succeeded", "failed"))
        assert (job["status"], job["counts"]["added"]) == ("succeeded", 5), job
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert "running jobs from the postgres queue, 2 at once" in err
