"""Accounts, keys, budgets, rate limits and usage over HTTP, on SQLite and on PostgreSQL."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from ..fakes.upstream import FakeUpstream
from .conftest import ADMIN, AUTH, Start

PROVIDER_CANARY = "sk-provider-canary-0xDEADBEEF"
PASSWORD = "correct horse battery staple"


def cfg(url: str) -> dict[str, Any]:
    return {
        "models": [
            {"name": "gpt", "provider": "openai", "model": "fake-model", "base_url": url + "/v1",
             "api_key": PROVIDER_CANARY, "input_price": 1000, "output_price": 1000},
            {"name": "other", "provider": "mock"},
        ],
        "tiers": {"free": {"requests_per_day": 3}},
    }


BODY = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


@pytest.fixture
async def api(gateway: Start, fake_openai: FakeUpstream, db_url: str) -> str:
    return str(await gateway(cfg(fake_openai.url), database_url=db_url))


async def make_user(c: httpx.AsyncClient, api: str, email: str, **extra: Any) -> tuple[str, str]:
    """Create a member; return (user id, session token)."""
    r = await c.post(api + "/api/v1/users", headers=AUTH, json={"email": email, "password": PASSWORD, **extra})
    assert r.status_code == 201, r.text
    login = await c.post(api + "/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    return r.json()["id"], login.json()["token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_login_logout_and_roles(api: str, client: httpx.AsyncClient) -> None:
    uid, token = await make_user(client, api, "alice@example.com")
    me = await client.get(api + "/api/v1/me", headers=bearer(token))
    assert me.json()["user_id"] == uid and me.json()["role"] == "member"
    # a member calling an admin route
    assert (await client.get(api + "/api/v1/users", headers=bearer(token))).status_code == 403
    assert (await client.post(api + "/api/v1/auth/logout", headers=bearer(token))).status_code == 204
    assert (await client.get(api + "/api/v1/me", headers=bearer(token))).status_code == 401


async def test_wrong_password_and_throttling(api: str, client: httpx.AsyncClient) -> None:
    await make_user(client, api, "bob@example.com")
    statuses = []
    for _ in range(12):
        r = await client.post(api + "/api/v1/auth/login", json={"email": "bob@example.com", "password": "nope"})
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            break
    assert statuses[0] == 401 and statuses[-1] == 429


async def test_keys_lifecycle(api: str, client: httpx.AsyncClient) -> None:
    _, token = await make_user(client, api, "carol@example.com")
    r = await client.post(api + "/api/v1/keys", headers=bearer(token), json={"name": "ci", "models": ["gpt"]})
    assert r.status_code == 201
    created = r.json()
    key, key_id = created["key"], created["id"]
    assert key.startswith(created["prefix"]) and len(key) > 40
    listed = (await client.get(api + "/api/v1/keys", headers=bearer(token))).json()
    assert [k["id"] for k in listed] == [key_id] and "key" not in listed[0]
    assert key not in (await client.get(api + "/api/v1/keys/" + key_id, headers=bearer(token))).text

    ok = await client.post(api + "/v1/chat/completions", headers=bearer(key), json=BODY)
    assert ok.status_code == 200, ok.text
    # a model the key may not use looks like a model that does not exist
    denied = await client.post(api + "/v1/chat/completions", headers=bearer(key), json={**BODY, "model": "other"})
    assert denied.status_code == 404
    models = (await client.get(api + "/v1/models", headers=bearer(key))).json()["data"]
    assert [m["id"] for m in models] == ["gpt"]

    rotated = (await client.post(api + f"/api/v1/keys/{key_id}/rotate", headers=bearer(token))).json()
    assert (await client.post(api + "/v1/chat/completions", headers=bearer(key), json=BODY)).status_code == 401
    new = rotated["key"]
    assert (await client.post(api + "/v1/chat/completions", headers=bearer(new), json=BODY)).status_code == 200
    assert (await client.delete(api + f"/api/v1/keys/{key_id}", headers=bearer(token))).status_code == 200
    assert (await client.post(api + "/v1/chat/completions", headers=bearer(new), json=BODY)).status_code == 401


async def test_other_users_objects_are_not_found(api: str, client: httpx.AsyncClient) -> None:
    _, alice = await make_user(client, api, "alice2@example.com")
    bob_id, bob = await make_user(client, api, "bob2@example.com")
    key_id = (await client.post(api + "/api/v1/keys", headers=bearer(alice), json={})).json()["id"]
    for method, path in [("GET", f"/api/v1/keys/{key_id}"), ("POST", f"/api/v1/keys/{key_id}/rotate"),
                         ("DELETE", f"/api/v1/keys/{key_id}")]:
        r = await client.request(method, api + path, headers=bearer(bob))
        assert r.status_code == 404 and key_id not in r.text
    assert (await client.get(api + "/api/v1/keys", headers=bearer(bob))).json() == []
    alice_id = (await client.get(api + "/api/v1/me", headers=bearer(alice))).json()["user_id"]
    assert (await client.get(api + f"/api/v1/users/{alice_id}", headers=bearer(bob))).status_code == 404
    assert (await client.get(api + f"/api/v1/users/{bob_id}", headers=bearer(bob))).status_code == 200


@pytest.mark.parametrize("field", [{"owner_id": "usr_x"}, {"role": "admin"}, {"spend": 0}, {"max_budget": 1e9},
                                   {"key_hash": "x"}])
async def test_unknown_fields_are_refused(api: str, client: httpx.AsyncClient, field: dict[str, Any]) -> None:
    _, token = await make_user(client, api, "dave@example.com")
    assert (await client.post(api + "/api/v1/keys", headers=bearer(token), json=field)).status_code == 422
    user = {"email": "eve@example.com", "password": PASSWORD, **field}
    if "role" not in field:
        assert (await client.post(api + "/api/v1/users", headers=AUTH, json=user)).status_code == 422


async def test_a_key_never_grants_more_than_its_creator(api: str, client: httpx.AsyncClient) -> None:
    _, token = await make_user(client, api, "frank@example.com", models=["gpt"], budget_usd=5, rpm=10)
    for body in ({"models": ["other"]}, {"budget_usd": 6}, {"rpm": 11}):
        assert (await client.post(api + "/api/v1/keys", headers=bearer(token), json=body)).status_code == 403
    inherited = (await client.post(api + "/api/v1/keys", headers=bearer(token), json={})).json()
    assert (inherited["models"], inherited["budget_usd"], inherited["rpm"]) == (["gpt"], 5, 10)
    # a key made by a key cannot outlive or out-spend it
    child = await client.post(api + "/api/v1/keys", headers=bearer(inherited["key"]), json={"budget_usd": 5.5})
    assert child.status_code == 403


async def test_revoking_a_user_revokes_every_credential(api: str, client: httpx.AsyncClient) -> None:
    uid, token = await make_user(client, api, "gina@example.com")
    key = (await client.post(api + "/api/v1/keys", headers=bearer(token), json={})).json()["key"]
    assert (await client.post(api + "/v1/chat/completions", headers=bearer(key), json=BODY)).status_code == 200
    assert (await client.post(api + f"/api/v1/users/{uid}/revoke", headers=AUTH)).status_code == 200
    assert (await client.post(api + "/v1/chat/completions", headers=bearer(key), json=BODY)).status_code == 401
    assert (await client.get(api + "/api/v1/me", headers=bearer(token))).status_code == 401
    login = await client.post(api + "/api/v1/auth/login", json={"email": "gina@example.com", "password": PASSWORD})
    assert login.status_code == 401


async def test_budget_refuses_with_429_naming_it(api: str, client: httpx.AsyncClient,
                                                 fake_openai: FakeUpstream) -> None:
    _, token = await make_user(client, api, "hank@example.com")
    # each answer costs (12 + 8) * 1000 / 1e6 = $0.02; the hold is larger (max_tokens=10)
    key = (await client.post(api + "/api/v1/keys", headers=bearer(token),
                             json={"name": "tiny", "budget_usd": 0.05, "budget_period": "day"})).json()["key"]
    statuses = []
    for _ in range(6):
        r = await client.post(api + "/v1/chat/completions", headers=bearer(key), json=BODY)
        statuses.append(r.status_code)
        if r.status_code == 429:
            err = r.json()["error"]
            assert "tiny" in err["message"] and err["code"] == "budget_exceeded"
            assert int(r.headers["retry-after"]) >= 1
            break
    assert statuses[0] == 200 and statuses[-1] == 429
    assert len(fake_openai.requests) == statuses.count(200)  # the refused request never went upstream


async def test_rate_limit_per_key_and_tier(api: str, client: httpx.AsyncClient) -> None:
    _, token = await make_user(client, api, "ivy@example.com")
    key = (await client.post(api + "/api/v1/keys", headers=bearer(token), json={"rpm": 2})).json()["key"]
    codes = [(await client.post(api + "/v1/chat/completions", headers=bearer(key), json=BODY)).status_code
             for _ in range(3)]
    assert codes == [200, 200, 429]
    _, free = await make_user(client, api, "jim@example.com", tier="free")
    answers = [await client.post(api + "/v1/chat/completions", headers=bearer(free), json=BODY) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert "retry-after" in answers[-1].headers


async def test_usage_is_recorded_and_scoped(api: str, client: httpx.AsyncClient) -> None:
    uid, token = await make_user(client, api, "kim@example.com")
    key = (await client.post(api + "/api/v1/keys", headers=bearer(token), json={})).json()
    for _ in range(3):
        assert (await client.post(api + "/v1/chat/completions", headers=bearer(key["key"]), json=BODY)).is_success
    await client.post(api + "/v1/chat/completions", headers=AUTH, json={**BODY, "model": "other"})
    mine = (await client.get(api + "/api/v1/usage", headers=bearer(token), params={"group_by": "key"})).json()
    assert [(r["group"], r["requests"]) for r in mine["data"]] == [(key["id"], 3)]
    assert mine["data"][0]["cost_usd"] == pytest.approx(3 * 0.02)
    everyone = (await client.get(api + "/api/v1/usage", headers=AUTH, params={"group_by": "model"})).json()
    assert {r["group"]: r["requests"] for r in everyone["data"]} == {"gpt": 3, "other": 1}
    by_day = (await client.get(api + "/api/v1/usage", headers=AUTH, params={"group_by": "day"})).json()
    assert sum(r["requests"] for r in by_day["data"]) == 4 and by_day["data"][0]["group"].count("-") == 2
    by_user = (await client.get(api + "/api/v1/usage", headers=AUTH, params={"group_by": "user"})).json()
    assert {r["group"] for r in by_user["data"]} == {uid, "usr_system"}


@pytest.mark.parametrize(
    "payload", ["' OR '1'='1", "1; DROP TABLE users; --", "key_x' UNION SELECT * FROM api_keys --"]
)
async def test_sql_injection_payloads(api: str, client: httpx.AsyncClient, payload: str) -> None:
    r = await client.post(api + "/v1/chat/completions", headers={"Authorization": f"Bearer tt-{payload}"}, json=BODY)
    assert r.status_code == 401
    r = await client.get(api + "/api/v1/keys/" + payload, headers=AUTH)
    assert r.status_code == 404
    for params in ({"group_by": payload}, {"sort": payload}, {"start": payload}):
        r = await client.get(api + "/api/v1/usage", headers=AUTH, params=params)
        assert r.status_code == 422
        assert "sql" not in r.text.lower() and "select" not in r.text.lower()
    assert (await client.get(api + "/api/v1/users", headers=AUTH)).status_code == 200  # the table is still there


async def test_no_credential_is_401_before_anything(api: str, client: httpx.AsyncClient,
                                                    fake_openai: FakeUpstream) -> None:
    for method, path in [("GET", "/api/v1/keys"), ("POST", "/api/v1/keys"), ("GET", "/api/v1/usage"),
                         ("GET", "/api/v1/users"), ("POST", "/v1/chat/completions")]:
        r = await client.request(method, api + path, json=BODY)
        assert r.status_code == 401, path
        r = await client.request(method, api + path, json=BODY, headers={"Host": "localhost"})
        assert r.status_code == 401, path
        r = await client.request(method, api + path, json=BODY, headers={"Host": "evil.example/api/v1/../health"})
        assert r.status_code in (400, 401), path
    assert fake_openai.requests == []


async def test_canary_secrets_never_in_logs_or_errors(api: str, client: httpx.AsyncClient,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    canary_pw = "canary-password-SQUEAMISH-OSSIFRAGE"
    r = await client.post(api + "/api/v1/users", headers=AUTH, json={"email": "leo@example.com", "password": canary_pw})
    bodies = [r.text]
    bodies.append((await client.post(api + "/api/v1/auth/login",
                                      json={"email": "leo@example.com", "password": canary_pw + "x"})).text)
    login = await client.post(api + "/api/v1/auth/login", json={"email": "leo@example.com", "password": canary_pw})
    key = (await client.post(api + "/api/v1/keys", headers=bearer(login.json()["token"]), json={})).json()["key"]
    bodies.append((await client.post(api + "/v1/chat/completions", headers=bearer(key + "x"), json=BODY)).text)
    bodies.append((await client.post(api + "/v1/chat/completions", headers=bearer(key), json={"bad": 1})).text)
    bodies.append((await client.get(api + "/api/v1/keys", headers=bearer(key))).text)
    for secret in (canary_pw, key, PROVIDER_CANARY, ADMIN):
        assert all(secret not in b for b in bodies)
        assert secret not in caplog.text


async def test_repeated_wrong_keys_are_throttled(api: str, client: httpx.AsyncClient) -> None:
    codes = []
    for i in range(15):
        r = await client.post(api + "/v1/chat/completions", headers=bearer(f"tt-wrong-{i}"), json=BODY)
        codes.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            break
    assert codes[0] == 401 and codes[-1] == 429
    # a valid key seen before keeps working from that address; the admin key too
    assert (await client.post(api + "/v1/chat/completions", headers=AUTH, json=BODY)).status_code == 200


async def test_team_user_and_global_budgets(gateway: Start, fake_openai: FakeUpstream, db_url: str,
                                            client: httpx.AsyncClient) -> None:
    api = await gateway(cfg(fake_openai.url), database_url=db_url, global_daily_budget_usd=0.3)
    team = (await client.post(api + "/api/v1/teams", headers=AUTH,
                              json={"name": "ml", "budget_usd": 0.05, "budget_period": "month"})).json()
    _, token = await make_user(client, api, "team@example.com", team_id=team["id"])
    codes = [(await client.post(api + "/v1/chat/completions", headers=bearer(token), json=BODY)) for _ in range(4)]
    assert [c.status_code for c in codes][:1] == [200] and codes[-1].status_code == 429
    assert "team 'ml'" in codes[-1].json()["error"]["message"]
    _, solo = await make_user(client, api, "solo@example.com", budget_usd=0.03, budget_period="day")
    first = await client.post(api + "/v1/chat/completions", headers=bearer(solo), json=BODY)
    second = await client.post(api + "/v1/chat/completions", headers=bearer(solo), json=BODY)
    assert first.status_code == 200 and second.status_code == 429
    assert "solo@example.com" in second.json()["error"]["message"]
    # the global daily cap binds the admin key too
    statuses = []
    for _ in range(20):
        r = await client.post(api + "/v1/chat/completions", headers=AUTH, json=BODY)
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert "global daily cap" in r.json()["error"]["message"]
            break
    assert statuses[-1] == 429


async def test_cancelled_stream_is_recorded_and_charged_once(api: str, client: httpx.AsyncClient,
                                                             fake_openai: FakeUpstream) -> None:
    import asyncio

    from ..fakes import openai as fmt
    from ..fakes.upstream import Reply

    never = asyncio.Event()
    fake_openai.queue(Reply(sse=fmt.stream_events(["first", "second"]), gate=never))
    async with httpx.AsyncClient(timeout=10) as c, c.stream(
        "POST", api + "/v1/chat/completions", headers=AUTH, json={**BODY, "stream": True}
    ) as resp:
        await anext(resp.aiter_lines())
    await asyncio.wait_for(fake_openai.cancel_event.wait(), 5)
    for _ in range(50):
        data = (await client.get(api + "/api/v1/usage", headers=AUTH, params={"group_by": "model"})).json()["data"]
        if data:
            break
        await asyncio.sleep(0.05)
    assert data[0]["requests"] == 1 and data[0]["errors"] == 1  # recorded as 499 (client closed)
    assert 0 < data[0]["cost_usd"] < 0.03  # the prompt and the words produced, estimated; charged once


async def test_sessions_are_listed_and_only_their_owner_can_end_them(api: str, client: httpx.AsyncClient) -> None:
    _, alice = await make_user(client, api, "sess-a@example.com")
    _, bob = await make_user(client, api, "sess-b@example.com")
    sessions = (await client.get(api + "/api/v1/sessions", headers=bearer(alice))).json()
    assert len(sessions) == 1 and sessions[0]["current"] is True and alice not in str(sessions)
    sid = sessions[0]["id"]
    assert (await client.delete(api + f"/api/v1/sessions/{sid}", headers=bearer(bob))).status_code == 404
    assert (await client.get(api + "/api/v1/me", headers=bearer(alice))).status_code == 200
    assert (await client.delete(api + f"/api/v1/sessions/{sid}", headers=bearer(alice))).status_code == 204
    assert (await client.get(api + "/api/v1/me", headers=bearer(alice))).status_code == 401


async def test_expired_key_is_refused(api: str, client: httpx.AsyncClient) -> None:
    import time

    _, token = await make_user(client, api, "exp@example.com")
    past = (await client.post(api + "/api/v1/keys", headers=bearer(token), json={"expires_at": time.time() - 1})).json()
    r = await client.post(api + "/v1/chat/completions", headers=bearer(past["key"]), json=BODY)
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]


async def test_first_admin_from_the_environment(gateway: Start, fake_openai: FakeUpstream, db_url: str,
                                                client: httpx.AsyncClient) -> None:
    api = await gateway(cfg(fake_openai.url), database_url=db_url, admin_email="Boss@Example.com",
                        admin_password="boss-password-123")
    login = await client.post(api + "/api/v1/auth/login", json={"email": "boss@example.com",
                                                                "password": "boss-password-123"})
    assert login.status_code == 200 and login.json()["user"]["role"] == "admin"
    assert (await client.get(api + "/api/v1/users", headers=bearer(login.json()["token"]))).status_code == 200
    assert (await client.get(api + "/api/v1/users", headers=AUTH)).status_code == 200  # the admin key still works


async def test_requests_per_minute_per_client_address(gateway: Start, fake_openai: FakeUpstream, db_url: str,
                                                      client: httpx.AsyncClient) -> None:
    api = await gateway({**cfg(fake_openai.url), "ip_rpm": 3}, database_url=db_url)
    _, token = await make_user(client, api, "ip@example.com")
    answers = [await client.post(api + "/v1/chat/completions", headers=bearer(token), json=BODY) for _ in range(2)]
    answers += [await client.post(api + "/v1/chat/completions", headers=AUTH, json=BODY) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]  # every credential from one address counts
    assert "address 127.0.0.1" in answers[-1].json()["error"]["message"]


async def test_one_password_over_many_accounts_is_throttled(api: str, client: httpx.AsyncClient) -> None:
    codes = []
    for i in range(15):
        r = await client.post(api + "/api/v1/auth/login", json={"email": f"nobody{i}@example.com", "password": "x"})
        codes.append(r.status_code)
        if r.status_code == 429:
            break
    assert codes[0] == 401 and codes[-1] == 429
