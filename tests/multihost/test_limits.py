"""Budgets and rate limits hold for the whole fleet: three hosts behind HAProxy, one PostgreSQL, one Redis."""

from __future__ import annotations

import pytest
from deploy.multihost.fleet import Fleet

from .helpers import chat, fire, make_key, usage_of, wait_usage

CONCURRENT = 50


async def test_a_budget_admits_exactly_what_it_affords_across_three_hosts(hosts: Fleet) -> None:
    # Each call of "priced" with max_tokens 10 holds 10 x $0.001 = $0.01 (its input is free) and costs exactly that
    # (the fake answers max_tokens tokens): a budget of $0.12 affords 12 calls, whichever host takes them.
    affords = 12
    key_id, key = await make_key(hosts, budget_usd=affords * 0.01, budget_period="total")
    answers = await fire(hosts, key, CONCURRENT, chat(max_tokens=10))
    codes = [r.status_code for r in answers]
    assert codes.count(200) == affords, codes
    refused = [r for r in answers if r.status_code != 200]
    assert len(refused) == CONCURRENT - affords
    assert {r.status_code for r in refused} == {429}
    assert {r.json()["error"]["code"] for r in refused} == {"budget_exceeded"}
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    # Spread over the three processes by the load balancer (each process makes its own request ids).
    assert {hosts.served_by(r) for r in answers} == set(hosts.hosts)
    rows = await wait_usage(hosts, key_id, CONCURRENT)
    paid = [r for r in rows if r["status"] == 200]
    assert len(paid) == affords
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(affords * 0.01)
    assert sum(r["cost_usd"] for r in rows) <= affords * 0.01 + 1e-9


async def test_a_rate_limit_admits_exactly_its_requests_per_minute_across_three_hosts(hosts: Fleet) -> None:
    rpm = 15
    key_id, key = await make_key(hosts, rpm=rpm)
    answers = await fire(hosts, key, CONCURRENT, chat("free"))
    codes = [r.status_code for r in answers]
    assert codes.count(200) == rpm, codes
    refused = [r for r in answers if r.status_code != 200]
    assert {r.status_code for r in refused} == {429}
    assert all(r.json()["error"]["type"] == "rate_limit_error" for r in refused)
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    assert {hosts.served_by(r) for r in answers} == set(hosts.hosts)
    # Refused before admission: only what was admitted is recorded.
    rows = await wait_usage(hosts, key_id, rpm)
    assert sorted(r["status"] for r in rows) == [200] * rpm
    assert len(await usage_of(hosts, key_id)) == rpm
