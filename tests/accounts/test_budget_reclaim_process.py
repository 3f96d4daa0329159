"""A real ``thinktank serve`` killed with SIGKILL while it holds a budget lease: the lease comes back (read from
the budget's row or hash) once another process runs, within the bound (``THINKTANK_BUDGET_LEASE_TTL`` = 2 s
here: 3 s after the last renewal), and the new process can then spend the whole remaining budget. On SQLite,
PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..fakes import openai as wire
from ..fakes.process import Server
from ..fakes.upstream import FakeUpstream, Recorded, Reply

ADMIN = "tt-test-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
LEASE_TTL = 2.0
BOUND = LEASE_TTL * 1.5
SLACK = 15.0
"""Seconds allowed on top of the bound for a loaded machine (two shared cores): the wait is a deadline only."""


class Upstream:
    """The OpenAI fake served from a thread of its own: answers exactly ``max_tokens`` tokens; a question with
    "slow" in it is answered after a minute (the server holding its budget lease meanwhile)."""

    def __init__(self) -> None:
        self.url = ""
        self.asked: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def answer(self, rec: Recorded) -> Reply:
        body = rec.json if isinstance(rec.json, dict) else {}
        self.asked.append(body)
        slow = "slow" in str(body.get("messages", [{}])[-1].get("content", ""))
        tokens = int(body.get("max_tokens") or 8)
        return Reply(json=wire.completion("ok", completion_tokens=tokens), delay=60.0 if slow else 0.0)

    def _serve(self) -> None:
        fake = FakeUpstream(self.answer)
        self.url = self._loop.run_until_complete(fake.start())
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(fake.close())
        self._loop.close()

    def __enter__(self) -> Upstream:
        self._thread.start()
        assert self._started.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(params=["sqlite", "postgres", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """Where budgets live: the environment of the servers."""
    from ..fakes.databases import clone_pg, drop_pg, make_sqlite

    if request.param == "postgres":
        name, url = await clone_pg(request.getfixturevalue("pg_template"))
        try:
            yield {"THINKTANK_DATABASE_URL": url}
        finally:
            await drop_pg(name)
        return
    url = await asyncio.to_thread(make_sqlite, tmp_path)
    if request.param == "redis":
        yield {"THINKTANK_DATABASE_URL": url,
               "THINKTANK_REDIS_URL": os.environ.get("THINKTANK_TEST_REDIS", "redis://127.0.0.1:6379/0")}
    else:
        yield {"THINKTANK_DATABASE_URL": url}


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as fake:
        yield fake


async def _budget(env: dict[str, str], key_id: str) -> tuple[float, float, int]:
    """The key's lifetime budget as stored: (spent, leased, lease records held for it)."""
    if "THINKTANK_REDIS_URL" in env:
        import redis.asyncio as aioredis

        client = aioredis.from_url(env["THINKTANK_REDIS_URL"])
        try:
            raw = await client.hgetall(f"tt:budget:key:{key_id}:total")
        finally:
            await client.aclose()
        fields = {str(k, "utf-8") if isinstance(k, bytes) else k: float(v) for k, v in raw.items()
                  if not (k.startswith(b"h:") if isinstance(k, bytes) else k.startswith("h:"))}
        return fields.get("spent", 0.0), fields.get("leased", 0.0), len(raw) - len(fields)
    from sqlalchemy import func, select

    from thinktank.store.db import Database
    from thinktank.store.tables import BudgetLeaseRow, BudgetRow

    db = Database(env["THINKTANK_DATABASE_URL"])
    try:
        async with db.session() as s:
            row = (await s.execute(select(BudgetRow.spent_usd, BudgetRow.leased_usd).where(
                BudgetRow.scope == "key", BudgetRow.scope_id == key_id))).one_or_none()
            count = await s.scalar(select(func.count()).select_from(BudgetLeaseRow).where(
                BudgetLeaseRow.scope == "key", BudgetLeaseRow.scope_id == key_id))
    finally:
        await db.close()
    rows = int(count or 0)
    return (0.0, 0.0, rows) if row is None else (float(row[0]), float(row[1]), rows)


def budget(env: dict[str, str], key_id: str) -> tuple[float, float, int]:
    return asyncio.run(_budget(env, key_id))


def wait_for(what: str, check: Any, deadline: float) -> Any:
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not by the deadline"
        time.sleep(0.1)


def test_the_lease_of_a_killed_server_comes_back_and_another_can_spend_the_whole_budget(
    server: type[Server], env: dict[str, str], store: dict[str, str], upstream: Upstream, tmp_path: Path,
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(  # $1 per 1,000 answer tokens; the prompt is free
        f"models:\n  - {{name: m, provider: openai, model: fake-model, base_url: '{upstream.url}/v1', api_key: x,"
        " input_price: 0, output_price: 1000}\n")
    env = {**env, **store, "THINKTANK_ADMIN_KEY": ADMIN, "THINKTANK_CONFIG": str(cfg),
           "THINKTANK_BUDGET_LEASE_TTL": str(LEASE_TTL)}
    first = server([], env)
    made = httpx.post(first.url + "/api/v1/keys", headers=AUTH, timeout=10,
                      json={"name": "cap", "budget_usd": 1.0, "budget_period": "total"})
    assert made.status_code == 201, made.text
    key_id, key = made.json()["id"], made.json()["key"]
    headers = {"Authorization": f"Bearer {key}"}

    def ask(url: str, question: str, max_tokens: int) -> httpx.Response | None:
        body = {"model": "m", "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens}
        try:
            return httpx.post(url + "/v1/chat/completions", headers=headers, json=body, timeout=90)
        except httpx.HTTPError:
            return None  # the server was killed under it

    # A request under way holds $0.50 (500 tokens): the first server leases it.
    slow = threading.Thread(target=ask, args=(first.url, "slow, please", 500), daemon=True)
    slow.start()
    wait_for("the lease", lambda: budget(env, key_id)[1] >= 0.5 - 1e-9, time.monotonic() + 30)
    first.proc.kill()  # SIGKILL: no flush, no handing back
    first.proc.wait(10)
    killed = time.monotonic()
    slow.join(30)
    spent, leased, held = budget(env, key_id)
    assert (spent, held) == (0.0, 1) and leased == pytest.approx(0.5)  # left behind: nobody is there to renew it

    second = server([], env)  # reclaims at once, then every second (ttl / 2)
    ready = time.monotonic()
    wait_for("the lease back", lambda: budget(env, key_id)[1:] == (0.0, 0),
             max(killed + BOUND, ready) + SLACK)
    r = ask(second.url, "the whole budget", 1000)  # $1.00: all of it, which A's lease would not have left
    assert r is not None and r.status_code == 200, r and r.text
    assert upstream.asked[-1]["max_tokens"] == 1000  # not shortened: the whole budget was free
    refused = ask(second.url, "one more", 1)
    assert refused is not None and refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
    second.stop()
    spent, leased, held = budget(env, key_id)
    assert spent == pytest.approx(1.0) and leased == pytest.approx(0.0, abs=1e-9) and held == 0
