"""Proof under concurrency: budgets that cannot be overspent, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from thinktank.store.db import Database
from thinktank.store.tables import BudgetRow, UsageRow

from ..fakes.upstream import FakeUpstream
from .conftest import AUTH, Start

# A hold is (1.5 x prompt estimate + max_tokens) x $1000/M; the answer costs (12 + 8) x $1000/M = $0.02.
BODY = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 30}


def cfg(url: str) -> dict[str, Any]:
    return {"models": [{"name": "gpt", "provider": "openai", "model": "fake-model", "base_url": url + "/v1",
                        "api_key": "k", "input_price": 1000, "output_price": 1000}]}


@pytest.mark.parametrize("spent_before", [0, 1])
async def test_fifty_requests_each_over_half_the_budget_admit_exactly_one(
    gateway: Start, fake_openai: FakeUpstream, db_url: str, spent_before: int
) -> None:
    url = await gateway(cfg(fake_openai.url), database_url=db_url)
    async with httpx.AsyncClient(timeout=30) as c:
        # the budget leaves $0.06 (after one earlier answer of $0.02 when spent_before): every hold
        # (~$0.045 + prompt) is more than half of what remains, so at most one fits.
        budget = 0.06 + 0.02 * spent_before
        key = (await c.post(url + "/api/v1/keys", headers=AUTH,
                            json={"budget_usd": budget, "budget_period": "total"})).json()
        auth = {"Authorization": f"Bearer {key['key']}"}
        for _ in range(spent_before):
            assert (await c.post(url + "/v1/chat/completions", headers=auth, json=BODY)).status_code == 200
        before = len(fake_openai.requests)
        answers = await asyncio.gather(*(c.post(url + "/v1/chat/completions", headers=auth, json=BODY)
                                         for _ in range(50)))
    codes = [a.status_code for a in answers]
    assert codes.count(200) == 1 and codes.count(429) == 49, codes
    assert all(a.json()["error"]["code"] == "budget_exceeded" for a in answers if a.status_code == 429)
    assert len(fake_openai.requests) - before == 1  # refused requests never reached the upstream
    db = Database(db_url)
    try:
        await asyncio.sleep(0)  # the server stops (and flushes) when the fixture ends; read the ledger now
        async with db.session() as s:
            row = (await s.execute(select(BudgetRow).where(BudgetRow.scope_id == key["id"]))).scalar_one()
        assert row.spent_usd + row.leased_usd <= row.limit_usd + 1e-9
    finally:
        await db.close()


async def test_spend_never_exceeds_the_cap_under_load(gateway: Start, fake_openai: FakeUpstream,
                                                      db_url: str) -> None:
    url = await gateway(cfg(fake_openai.url), database_url=db_url)
    async with httpx.AsyncClient(timeout=30) as c:
        key = (await c.post(url + "/api/v1/keys", headers=AUTH,
                            json={"budget_usd": 0.5, "budget_period": "day"})).json()
        auth = {"Authorization": f"Bearer {key['key']}"}
        answers = await asyncio.gather(*(c.post(url + "/v1/chat/completions", headers=auth, json=BODY)
                                         for _ in range(60)))
        admitted = sum(a.status_code == 200 for a in answers)
        assert admitted >= 1 and all(a.status_code in (200, 429) for a in answers)
        usage = (await c.get(url + "/api/v1/usage", headers=AUTH, params={"group_by": "key"})).json()["data"]
    spent = next(r["cost_usd"] for r in usage if r["group"] == key["id"])
    assert spent == pytest.approx(admitted * 0.02)
    assert spent <= 0.5
    db = Database(db_url)
    try:
        async with db.session() as s:
            rows = await s.scalar(select(func.count()).select_from(UsageRow).where(UsageRow.key_id == key["id"]))
        assert rows == 60  # refused requests are recorded too (status 429)
    finally:
        await db.close()
