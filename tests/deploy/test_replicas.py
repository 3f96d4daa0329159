"""Several replicas of thinktank on one database, as the Kubernetes Deployment and a load balancer run them:
they may all start at once on a fresh PostgreSQL database (the first deployment, or a scale-up), and each
migrates it at start. They take turns: every one of them starts."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from thinktank.store.migrate import HEAD

from ..fakes.databases import drop_pg, make_empty_pg
from ..fakes.process import clean_env, free_port

REPLICAS = 3


@pytest.fixture
def fresh_pg() -> Iterator[str]:
    name, url = asyncio.run(make_empty_pg())
    try:
        yield url
    finally:
        asyncio.run(drop_pg(name))


async def _version(url: str) -> list[str]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return [r["version_num"] for r in await conn.fetch("SELECT version_num FROM alembic_version")]
    finally:
        await conn.close()


def test_replicas_starting_at_once_on_a_fresh_database_all_start(fresh_pg: str, redis_url: str,
                                                                 tmp_path: Path) -> None:
    procs: list[tuple[subprocess.Popen[str], str]] = []
    try:
        for n in range(REPLICAS):  # started together, before any of them has migrated
            port = free_port()
            env = {**clean_env(tmp_path / f"pod{n}"), "THINKTANK_DATABASE_URL": fresh_pg,
                   "THINKTANK_REDIS_URL": redis_url, "THINKTANK_ADMIN_KEY": "tt-admin-replicas",
                   "THINKTANK_PORT": str(port), "THINKTANK_DEMO": "true"}
            proc = subprocess.Popen([sys.executable, "-m", "thinktank", "serve"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            procs.append((proc, f"http://127.0.0.1:{port}"))
        waiting = {url for _, url in procs}
        deadline = time.monotonic() + 60
        while waiting:
            for proc, url in procs:
                assert proc.poll() is None, f"a replica exited: {proc.stderr.read() if proc.stderr else ''}"
                if url in waiting:
                    try:
                        if httpx.get(url + "/ready", timeout=1).status_code == 200:
                            waiting.discard(url)
                    except httpx.HTTPError:
                        pass
            assert time.monotonic() < deadline, f"{len(waiting)} replicas did not become ready"
            time.sleep(0.1)
        assert asyncio.run(_version(fresh_pg)) == [HEAD]
        # One database behind them all: a key made on one replica works on the others.
        first, *others = [url for _, url in procs]
        made = httpx.post(first + "/api/v1/keys", json={"name": "everywhere"},
                          headers={"Authorization": "Bearer tt-admin-replicas"})
        assert made.status_code in (200, 201), made.text
        key = made.json()["key"]
        for url in others:
            assert httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            _, err = proc.communicate(timeout=15)
            assert "Traceback" not in err, err
