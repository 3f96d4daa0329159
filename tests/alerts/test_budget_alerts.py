"""Budget alerts through the app: real requests to a priced model push a key's spend past 50 %, 80 % and 100 %;
each threshold is told once per period, on SQLite, PostgreSQL and Redis, by one worker of several, and not again
after a restart."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from ..api.conftest import AUTH
from .conftest import PROVIDER_CANARY, Env, model_config, settled, webhook

DAY = 86400.0


async def test_each_threshold_once_per_period(alert_env: Env, store_settings: dict[str, Any]) -> None:
    env = alert_env
    url, app = await env.start(model_config(env.upstream.fake.url, {"webhook": webhook(env.receiver.url)}),
                               **store_settings)
    key_id, key = await env.key(url, 1.0)

    async def spend(*costs: float) -> list[float]:
        for cost in costs:
            r = await env.ask(url, key, cost)
            assert r.status_code == 200, r.text
        await settled(app)
        return [a["threshold"] for a in env.receiver.of("budget_threshold")]

    assert await spend(0.30) == []
    assert await spend(0.25) == [0.5]  # $0.55
    assert await spend(0.05) == [0.5]  # $0.60: nothing new
    assert await spend(0.25) == [0.5, 0.8]  # $0.85
    assert await spend(0.10) == [0.5, 0.8]  # $0.95
    assert await spend(0.06) == [0.5, 0.8, 1.0]  # $1.01 (requests here cost more than they reserve)

    alerts = env.receiver.of("budget_threshold")
    first = alerts[0]
    assert first["scope"] == "key" and first["scope_id"] == key_id and "ci-bot" in first["name"]
    assert (first["period"], first["period_key"], first["limit_usd"]) == ("day", "2026-11-21", 1.0)
    assert first["spent_usd"] == pytest.approx(0.55) and first["timestamp"].startswith("2026-11-21T")
    assert [round(a["spent_usd"], 2) for a in alerts] == [0.55, 0.85, 1.01]
    assert len({a["id"] for a in alerts}) == 3
    raw = orjson.dumps(env.receiver.alerts).decode()
    assert key[:12] in raw or "ci-bot" in raw  # the key's public prefix may name it; its secret part never
    assert key[12:] not in raw and PROVIDER_CANARY not in raw

    # Further requests in the same period are refused (the budget is spent): nothing is told again.
    for _ in range(3):
        assert (await env.ask(url, key)).status_code == 429  # refused before the upstream
    await settled(app)
    assert len(env.receiver.of("budget_threshold")) == 3

    # The next day is a new period: the thresholds are told again, once each.
    env.clock.advance(DAY)
    assert await spend(0.6) == [0.5, 0.8, 1.0, 0.5]
    assert await spend(0.1) == [0.5, 0.8, 1.0, 0.5]
    assert env.receiver.of("budget_threshold")[-1]["period_key"] == "2026-11-22"
    assert env.receiver.rejected == 0


async def test_a_budget_refusing_requests_tells_its_last_threshold_once(
    alert_env: Env, store_settings: dict[str, Any],
) -> None:
    """A budget refuses a request whose worst case no longer fits, usually before its spend reaches the limit: that
    refusal is the 100 % alert (marked ``refused``), told once however many requests are refused."""
    env = alert_env
    url, app = await env.start(model_config(env.upstream.fake.url, {"webhook": webhook(env.receiver.url)}),
                               **store_settings)
    _, key = await env.key(url, 1.0)
    for cost in (0.55, 0.30, 0.14):  # $0.99: a request's worst case (~$0.02) no longer fits
        assert (await env.ask(url, key, cost)).status_code == 200
    await settled(app)
    assert [a["threshold"] for a in env.receiver.of("budget_threshold")] == [0.5, 0.8]
    for _ in range(3):
        assert (await env.ask(url, key)).status_code == 429
    await settled(app)
    alerts = env.receiver.of("budget_threshold")
    assert [(a["threshold"], a["refused"]) for a in alerts] == [(0.5, False), (0.8, False), (1.0, True)]
    assert alerts[-1]["spent_usd"] == pytest.approx(0.99)
    assert "refusing requests" in alerts[-1]["message"]


async def test_two_workers_crossing_at_once_send_one_alert_and_a_restart_sends_none(
        alert_env: Env, store_settings: dict[str, Any]) -> None:
    env = alert_env
    config = model_config(env.upstream.fake.url, {"webhook": webhook(env.receiver.url)})
    url_a, app_a = await env.start(config, **store_settings)
    url_b, app_b = await env.start(config, **store_settings)
    _, key = await env.key(url_a, 1.0, name="shared")
    # Each worker settles $0.60 (more than it reserved): whichever writes second sees 120 %, the first 60 %;
    # both see 50 % crossed, and 50 % is told once.
    for url in (url_a, url_b):
        assert (await env.ask(url, key, 0.6)).status_code == 200
    await settled(app_a, app_b)
    assert sorted(a["threshold"] for a in env.receiver.of("budget_threshold")) == [0.5, 0.8, 1.0]

    # Many writes at once from both, for a fresh key: still one alert per threshold.
    _, key2 = await env.key(url_a, 10.0, name="busy")
    results = await asyncio.gather(*(env.ask(url, key2, 0.4) for url in (url_a, url_b) * 8))
    assert all(r.status_code == 200 for r in results)
    await settled(app_a, app_b)
    busy = [a for a in env.receiver.of("budget_threshold") if "busy" in a["name"]]
    assert sorted(a["threshold"] for a in busy) == [0.5], busy  # $6.40 of $10

    # A worker started afresh (a restart: nothing in memory) writing more spend tells nothing already told.
    url_c, app_c = await env.start(config, **store_settings)
    assert (await env.ask(url_c, key2, 0.2)).status_code == 200
    await settled(app_c)
    assert len([a for a in env.receiver.of("budget_threshold") if "busy" in a["name"]]) == 1
    assert (await env.ask(url_c, key2, 1.5)).status_code == 200  # $8.10: 80 % now, told by the new worker
    await settled(app_c)
    assert sorted(a["threshold"] for a in env.receiver.alerts if "busy" in a["name"]) == [0.5, 0.8]


async def test_user_team_and_global_budgets_are_named(alert_env: Env, tmp_path: Any) -> None:
    from ..fakes.databases import make_sqlite

    env = alert_env
    db_url = await asyncio.to_thread(make_sqlite, tmp_path)
    url, app = await env.start(
        model_config(env.upstream.fake.url, {"webhook": webhook(env.receiver.url), "budget_thresholds": [0.5]}),
        database_url=db_url, global_daily_budget_usd=4.0)
    team = (await env.http.post(url + "/api/v1/teams", headers=AUTH,
                                json={"name": "ml", "budget_usd": 2.0, "budget_period": "month"})).json()
    user = await env.http.post(url + "/api/v1/users", headers=AUTH, json={
        "email": "ada@example.com", "password": "correct horse battery staple", "team_id": team["id"],
        "budget_usd": 1.0, "budget_period": "total"})
    assert user.status_code == 201, user.text
    login = await env.http.post(url + "/api/v1/auth/login",
                                json={"email": "ada@example.com", "password": "correct horse battery staple"})
    token = login.json()["token"]
    assert (await env.ask(url, token, 0.5)).status_code == 200  # user 50 %
    assert (await env.ask(url, token, 0.5)).status_code == 200  # team 50 %
    assert (await env.ask(url, AUTH["Authorization"][7:], 1.0)).status_code == 200  # global 50 % ($2 of $4)
    await settled(app)
    told = {(a["scope"], a["name"], a["period"], a["period_key"]) for a in env.receiver.alerts}
    assert told == {("user", "user ada@example.com", "total", "total"), ("team", "team 'ml'", "month", "2026-11"),
                    ("global", "the global daily cap", "day", "2026-11-21")}
    assert token not in orjson.dumps(env.receiver.alerts).decode()
