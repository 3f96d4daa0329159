"""What the journal's process tests share: an OpenAI fake served from a thread of its own (the servers under test
are other processes), the usage rows and budget a server left in its database or Redis, and waiting."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ..fakes import openai as wire
from ..fakes.upstream import FakeUpstream, Recorded, Reply

ADMIN = "tt-journal-admin-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
PRICE_CONFIG = (  # $1 per 1,000 answer tokens; the prompt is free
    "models:\n  - {{name: m, provider: openai, model: fake-model, base_url: '{url}/v1', api_key: x,"
    " input_price: 0, output_price: 1000}}\n")


class Upstream:
    """Answers ``max_tokens`` tokens (8 when not asked), streaming when asked; a question with "slow" in it is
    answered after a minute; with "hang" in it, never."""

    def __init__(self) -> None:
        self.url = ""
        self.asked = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def answer(self, rec: Recorded) -> Reply:
        body = rec.json if isinstance(rec.json, dict) else {}
        self.asked += 1
        question = str(body.get("messages", [{}])[-1].get("content", ""))
        tokens = int(body.get("max_tokens") or 8)
        if "hang" in question:
            return Reply(hang=True)
        delay = 60.0 if "slow" in question else 0.0
        if body.get("stream"):
            return Reply(sse=wire.stream_events(["ok"] * 3, completion_tokens=tokens), delay=delay)
        return Reply(json=wire.completion("ok", completion_tokens=tokens), delay=delay)

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


@dataclass(frozen=True)
class Answer:
    request_id: str
    cost: float


def ask(url: str, key: str, question: str, max_tokens: int, *, stream: bool = False) -> Answer | None:
    """One chat completion; its request id and cost as the client was told (None: no answer, or not a 200)."""
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": question}],
                            "max_tokens": max_tokens}
    headers = {"Authorization": f"Bearer {key}"}
    try:
        if not stream:
            r = httpx.post(url + "/v1/chat/completions", headers=headers, json=body, timeout=90)
            if r.status_code != 200:
                return None
            return Answer(r.headers["x-request-id"], float(r.json()["usage"]["cost"]))
        body.update(stream=True, stream_options={"include_usage": True})
        cost, done = None, False
        with httpx.stream("POST", url + "/v1/chat/completions", headers=headers, json=body, timeout=90) as r:
            if r.status_code != 200:
                return None
            rid = r.headers["x-request-id"]
            for line in r.iter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: ") and '"usage"' in line:
                    import orjson

                    usage = orjson.loads(line[6:]).get("usage")
                    if usage:
                        cost = float(usage["cost"])
        return Answer(rid, cost) if done and cost is not None else None
    except httpx.HTTPError:
        return None  # the server was killed under it


def make_key(url: str, budget: float) -> tuple[str, str]:
    made = httpx.post(url + "/api/v1/keys", headers=AUTH, timeout=10,
                      json={"name": "journal", "budget_usd": budget, "budget_period": "total"})
    assert made.status_code == 201, made.text
    return str(made.json()["id"]), str(made.json()["key"])


async def _usage(database_url: str, key_id: str | None) -> dict[str, tuple[float, int]]:
    from sqlalchemy import select

    from thinktank.store.db import Database
    from thinktank.store.tables import UsageRow

    db = Database(database_url)
    try:
        query = select(UsageRow.request_id, UsageRow.cost_usd, UsageRow.status)
        if key_id is not None:
            query = query.where(UsageRow.key_id == key_id)
        async with db.session() as s:
            rows = (await s.execute(query)).all()
    finally:
        await db.close()
    return {str(r[0]): (float(r[1]), int(r[2])) for r in rows}


def usage_rows(database_url: str, key_id: str | None = None) -> dict[str, tuple[float, int]]:
    """request id -> (cost, status) of the usage rows (of one key) the database holds."""
    return asyncio.run(_usage(database_url, key_id))


async def _budget(env: dict[str, str], key_id: str) -> tuple[float, float]:
    if "THINKTANK_REDIS_URL" in env:
        import redis.asyncio as aioredis

        client = aioredis.from_url(env["THINKTANK_REDIS_URL"])
        try:
            raw = await client.hmget(f"tt:budget:key:{key_id}:total", ["spent", "leased"])
        finally:
            await client.aclose()
        return float(raw[0] or 0.0), float(raw[1] or 0.0)
    from sqlalchemy import select

    from thinktank.store.db import Database
    from thinktank.store.tables import BudgetRow

    db = Database(env["THINKTANK_DATABASE_URL"])
    try:
        async with db.session() as s:
            row = (await s.execute(select(BudgetRow.spent_usd, BudgetRow.leased_usd).where(
                BudgetRow.scope == "key", BudgetRow.scope_id == key_id))).one_or_none()
    finally:
        await db.close()
    return (0.0, 0.0) if row is None else (float(row[0]), float(row[1]))


def budget(env: dict[str, str], key_id: str) -> tuple[float, float]:
    """The key's lifetime budget as stored: (spent, leased)."""
    return asyncio.run(_budget(env, key_id))


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)
