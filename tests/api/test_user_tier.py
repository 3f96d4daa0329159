"""``PUT /api/v1/users/{id}/tier``: an admin moves a user between configured rate-limit tiers, at once."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .conftest import AUTH, Start

PASSWORD = "correct horse battery staple"
CONFIG: dict[str, Any] = {"models": [{"name": "m", "provider": "mock"}],
                          "tiers": {"free": {"requests_per_day": 2}, "pro": {"requests_per_day": 1000}}}
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.fixture
async def api(gateway: Start) -> str:
    return str(await gateway(CONFIG))


async def _member(c: httpx.AsyncClient, api: str, email: str) -> tuple[str, dict[str, str]]:
    r = await c.post(api + "/api/v1/users", headers=AUTH, json={"email": email, "password": PASSWORD})
    assert r.status_code == 201, r.text
    login = await c.post(api + "/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    return r.json()["id"], {"Authorization": f"Bearer {login.json()['token']}"}


async def test_a_new_tier_applies_to_a_signed_in_user_at_once(api: str, client: httpx.AsyncClient) -> None:
    uid, member = await _member(client, api, "tiered@example.com")
    for _ in range(3):  # no tier: not limited per day
        assert (await client.post(api + "/v1/chat/completions", headers=member, json=BODY)).status_code == 200
    r = await client.put(api + f"/api/v1/users/{uid}/tier", headers=AUTH, json={"tier": "free"})
    assert r.status_code == 200, r.text
    assert r.json()["tier"] == "free"
    assert (await client.get(api + f"/api/v1/users/{uid}", headers=AUTH)).json()["tier"] == "free"
    codes = [(await client.post(api + "/v1/chat/completions", headers=member, json=BODY)).status_code
             for _ in range(3)]
    assert codes[-1] == 429  # the cached session saw the tier without signing in again
    r = await client.put(api + f"/api/v1/users/{uid}/tier", headers=AUTH, json={"tier": None})
    assert (r.status_code, r.json()["tier"]) == (200, None)
    assert (await client.post(api + "/v1/chat/completions", headers=member, json=BODY)).status_code == 200


async def test_unknown_tier_unknown_user_and_members_are_refused(api: str, client: httpx.AsyncClient) -> None:
    uid, member = await _member(client, api, "plain@example.com")
    r = await client.put(api + f"/api/v1/users/{uid}/tier", headers=AUTH, json={"tier": "gold"})
    assert r.status_code == 400
    assert "free" in r.json()["error"]["message"] and "pro" in r.json()["error"]["message"]
    assert (await client.get(api + f"/api/v1/users/{uid}", headers=AUTH)).json()["tier"] is None
    r = await client.put(api + "/api/v1/users/usr_nobody/tier", headers=AUTH, json={"tier": "pro"})
    assert r.status_code == 404
    r = await client.put(api + f"/api/v1/users/{uid}/tier", headers=member, json={"tier": "pro"})
    assert r.status_code == 403
    r = await client.put(api + f"/api/v1/users/{uid}/tier", headers=AUTH, json={"tier": "pro", "role": "admin"})
    assert r.status_code == 422  # unknown fields are refused
    assert (await client.get(api + f"/api/v1/users/{uid}", headers=AUTH)).json()["role"] == "member"
