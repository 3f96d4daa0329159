"""The admin page's data over HTTP: usage series, latency, recent errors, model health and budgets, from real
requests through a fake upstream, on SQLite and PostgreSQL. Members get 403; bad input a 4xx error body."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ..fakes import openai as fmt
from ..fakes.upstream import FakeUpstream
from .conftest import AUTH, Start

PASSWORD = "correct horse battery staple"
LEAK = "sk-abc123def456ghi789jkl012mno345pqr"
ADMIN_ROUTES = ("/api/v1/admin/usage/series", "/api/v1/admin/usage/latency", "/api/v1/admin/errors",
                "/api/v1/admin/health", "/api/v1/admin/budgets")


def cfg(url: str) -> dict[str, Any]:
    return {
        "models": [
            {"name": "gpt", "provider": "openai", "model": "fake-model", "base_url": url + "/v1",
             "api_key": "sk-provider-canary-0xDEADBEEF", "input_price": 1000, "output_price": 1000},
            {"name": "other", "provider": "mock"},
        ],
        "router": {"num_retries": 0, "allowed_fails": 1, "cooldown": 120},
    }


@pytest.fixture
async def api(gateway: Start, fake_openai: FakeUpstream, db_url: str) -> str:
    return str(await gateway(cfg(fake_openai.url), database_url=db_url, global_daily_budget_usd=50.0))


async def member(c: httpx.AsyncClient, api: str, email: str, **extra: Any) -> tuple[str, dict[str, str]]:
    r = await c.post(api + "/api/v1/users", headers=AUTH, json={"email": email, "password": PASSWORD, **extra})
    assert r.status_code == 201, r.text
    login = await c.post(api + "/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    return r.json()["id"], {"Authorization": f"Bearer {login.json()['token']}"}


async def chat(c: httpx.AsyncClient, api: str, headers: dict[str, str], model: str = "gpt") -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    return (await c.post(api + "/v1/chat/completions", headers=headers, json=body)).status_code


async def test_admin_sees_usage_errors_health_and_budgets(
    api: str, client: httpx.AsyncClient, fake_openai: FakeUpstream,
) -> None:
    team = (await client.post(api + "/api/v1/teams", headers=AUTH, json={"name": "ml", "budget_usd": 7})).json()
    alice_id, alice = await member(client, api, "alice@example.com", budget_usd=5, team_id=team["id"])
    bob_id, bob = await member(client, api, "bob@example.com")
    key = (await client.post(api + "/api/v1/keys", headers=alice,
                             json={"name": "ci", "budget_usd": 2, "budget_period": "day"})).json()
    key_auth = {"Authorization": f"Bearer {key['key']}"}

    assert [await chat(client, api, alice) for _ in range(2)] == [200, 200]
    assert await chat(client, api, key_auth) == 200
    assert await chat(client, api, bob, "other") == 200
    fake_openai.queue(fmt.error(500, f"upstream broke; key {LEAK} at https://u:pw1234567@x.example/v1",
                                type_="server_error"))
    assert await chat(client, api, bob) == 502

    # Series: everyone's, by model, in one bucket covering the last day.
    s = (await client.get(api + "/api/v1/admin/usage/series", headers=AUTH, params={"buckets": 1})).json()
    groups = {g["group"]: g for g in s["groups"]}
    assert groups["gpt"]["total"]["requests"] == 4 and groups["gpt"]["errors"] == [1]
    assert groups["gpt"]["cost_usd"][0] == pytest.approx(3 * 0.02)  # 12 + 8 tokens at $1000 per million
    assert groups["gpt"]["tokens"] == [60] and groups["other"]["requests"] == [1]
    assert s["buckets"] == 1 and s["end"] - s["start"] == 86400.0
    by_user = (await client.get(api + "/api/v1/admin/usage/series", headers=AUTH,
                                params={"by": "user", "buckets": 3, "top": 1})).json()
    assert [(g["group"], g["other"], g["total"]["requests"]) for g in by_user["groups"]] == [
        (alice_id, False, 3), ("other", True, 2)]
    # A member's own series: only their rows, admin routes refused.
    mine = (await client.get(api + "/api/v1/usage/series", headers=bob, params={"by": "key"})).json()
    assert [(g["group"], g["total"]["requests"]) for g in mine["groups"]] == [(None, 2)]

    latency = (await client.get(api + "/api/v1/admin/usage/latency", headers=AUTH)).json()["data"]
    gpt = next(r for r in latency if r["group"] == "gpt")
    assert (gpt["requests"], gpt["errors"]) == (4, 1) and 0 <= gpt["p50_ms"] <= gpt["p95_ms"]

    errors = (await client.get(api + "/api/v1/admin/errors", headers=AUTH)).json()["data"]
    assert [(e["model"], e["status"], e["user_id"]) for e in errors] == [("gpt", 502, bob_id)]

    health = await client.get(api + "/api/v1/admin/health", headers=AUTH)
    assert LEAK[:9] not in health.text and "pw1234567" not in health.text and "DEADBEEF" not in health.text
    dep = next(d for d in health.json()["data"] if d["id"] == "gpt")
    assert (dep["status"], dep["cooling_down"], dep["consecutive_failures"]) == ("cooling_down", True, 1)
    assert 0 < dep["cooldown_remaining_s"] <= 120
    assert [(e["status"], e["kind"]) for e in dep["recent_errors"]] == [(500, "UpstreamServerError")]

    budgets = (await client.get(api + "/api/v1/admin/budgets", headers=AUTH)).json()["data"]
    by_scope = {(b["scope"], b["scope_id"]): b for b in budgets}
    assert set(by_scope) == {("global", "all"), ("team", team["id"]), ("user", alice_id), ("key", key["id"])}
    user = by_scope[("user", alice_id)]
    assert (user["name"], user["period"], user["limit_usd"]) == ("alice@example.com", "month", 5.0)
    assert user["spent_usd"] == pytest.approx(0.06) and user["remaining_usd"] == pytest.approx(4.94)
    assert 0 <= user["available_usd"] <= user["remaining_usd"] + 1e-9
    k = by_scope[("key", key["id"])]
    assert (k["spent_usd"], k["period"], k["owner_email"], k["prefix"]) == (
        pytest.approx(0.02), "day", "alice@example.com", key["prefix"])
    assert 0 < k["resets_in_s"] <= 86400
    assert by_scope[("team", team["id"])]["spent_usd"] == pytest.approx(0.06)
    assert by_scope[("global", "all")]["spent_usd"] == pytest.approx(0.06)  # bob's failed request cost nothing

    for path in ADMIN_ROUTES:
        r = await client.get(api + path, headers=bob)
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error", path
        assert (await client.get(api + path)).status_code == 401


@pytest.mark.parametrize("path", ["/api/v1/admin/usage/series", "/api/v1/usage/series"])
@pytest.mark.parametrize("params", [
    {"buckets": 0}, {"buckets": -3}, {"buckets": 501}, {"buckets": 10**30}, {"by": "deployment"}, {"by": "x"},
    {"since": 200, "until": 100}, {"since": 100, "until": 100}, {"since": "nan"}, {"until": "inf"},
    {"since": "1e400"}, {"since": -1}, {"until": 10**20}, {"top": 0}, {"top": 51},
])
async def test_bad_series_input_is_a_4xx(api: str, client: httpx.AsyncClient, path: str,
                                         params: dict[str, Any]) -> None:
    r = await client.get(api + path, headers=AUTH, params=params)
    assert 400 <= r.status_code < 500, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(("path", "params"), [
    ("/api/v1/admin/usage/latency", {"by": "day"}), ("/api/v1/admin/usage/latency", {"limit": 0}),
    ("/api/v1/admin/usage/latency", {"since": 5, "until": 1}), ("/api/v1/admin/errors", {"limit": 10**30}),
    ("/api/v1/admin/errors", {"limit": -1}), ("/api/v1/admin/budgets", {"limit": 0}),
])
async def test_bad_input_elsewhere_is_a_4xx(api: str, client: httpx.AsyncClient, path: str,
                                            params: dict[str, Any]) -> None:
    r = await client.get(api + path, headers=AUTH, params=params)
    assert 400 <= r.status_code < 500, r.text
    assert "message" in r.json()["error"]
