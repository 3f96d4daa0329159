"""The ``alerts:`` section's mistakes are clear configuration errors; claims are taken once, however many workers
ask at the same moment, on SQLite, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from thinktank.alerts.claims import Claims, RedisClaims, SqlClaims
from thinktank.api.app import create_app
from thinktank.config import Settings, parse_config
from thinktank.errors import ConfigError
from thinktank.store.db import Database

from ..api.conftest import ADMIN
from ..fakes.clock import FakeClock

HOOK = {"url": "https://hooks.example.com/thinktank", "secret_env": "TT_HOOK_SECRET"}


def _parse(alerts: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config({"models": [{"name": "m", "provider": "mock"}], "alerts": alerts}, "thinktank.yaml")
    return caught.value.message


@pytest.mark.parametrize(("alerts", "says"), [
    ({"webhook": HOOK, "budget_thresholds": [0.5, 1.5]}, "alerts.budget_thresholds: Value error, 1.5 is not a "
                                                         "fraction of a budget"),
    ({"webhook": HOOK, "budget_thresholds": [-1]}, "-1 is not a fraction"),
    ({"webhook": HOOK, "budget_thresholds": [0]}, "0 is not a fraction"),
    ({"webhook": HOOK, "budget_thresholds": ["half"]}, "alerts.budget_thresholds[0]"),
    ({"webhook": HOOK, "budget_thresholds": [float("nan")]}, "finite number"),
    ({"webhook": {**HOOK, "secret": "inline"}}, "alerts.webhook.secret: Extra inputs are not permitted"),
    ({"webhook": HOOK, "sms": {"to": "+1"}}, "alerts.sms: Extra inputs are not permitted"),
    ({"webhook": {**HOOK, "url": "ftp://example.com/x"}}, "alerts.webhook.url: Value error, must start with http"),
    ({"webhook": {"url": HOOK["url"]}}, "alerts.webhook.secret_env: Field required"),
    ({"webhook": {**HOOK, "secret_env": "not a name"}}, "alerts.webhook.secret_env: String should match"),
    ({"webhook": {**HOOK, "retries": 99}}, "alerts.webhook.retries"),
    ({"webhook": HOOK, "cooldown_interval": -5}, "alerts.cooldown_interval"),
    ({}, "alerts need somewhere to go"),
    ({"email": {"host": "smtp.example.com", "from": "a@example.com", "to": []}}, "alerts.email.to"),
    ({"email": {"host": "smtp.example.com", "from": "not an address", "to": ["b@example.com"]}},
     "'not an address' is not an email address"),
    ({"email": {"host": "smtp.example.com", "from": "a@example.com", "to": ["b@example.com"], "username": "u"}},
     "give both username and password_env"),
    ({"email": {"host": "smtp.example.com", "from": "a@example.com", "to": ["b@example.com"], "username": "u",
                "password_env": "P", "security": "none"}}, "never sent without encryption"),
    ({"email": {"host": "smtp.example.com", "from": "a@example.com", "to": ["b@example.com"],
                "security": "tls13"}}, "alerts.email.security"),
    ("yes", "alerts: Input should be a valid dictionary"),
])
def test_config_mistakes_are_named(alerts: Any, says: str) -> None:
    message = _parse(alerts)
    assert message.startswith("thinktank.yaml: alerts") and says in message, message


def test_a_good_section_and_its_defaults() -> None:
    config = parse_config({"alerts": {"webhook": HOOK, "budget_thresholds": [1, 0.8, 0.8, 0.25], "email": {
        "host": "smtp.example.com", "from": "tt@example.com", "to": ["ops@example.com"], "security": "ssl"}}})
    alerts = config.alerts
    assert alerts is not None and alerts.budget_thresholds == [0.25, 0.8, 1.0]
    assert alerts.email is not None and alerts.email.effective_port == 465 and alerts.email.sender == "tt@example.com"
    assert (alerts.cooldowns, alerts.cooldown_interval) == (True, 900.0)
    assert parse_config({}).alerts is None


def test_a_secret_variable_not_set_stops_the_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TT_HOOK_SECRET", raising=False)
    settings = Settings(data_dir=tmp_path / "data", admin_key=ADMIN)
    with pytest.raises(ConfigError, match="alerts: webhook: secret_env: environment variable TT_HOOK_SECRET is not"):
        create_app(settings, parse_config({"alerts": {"webhook": HOOK}}))
    email = {"host": "smtp.example.com", "from": "tt@example.com", "to": ["ops@example.com"], "username": "tt",
             "password_env": "TT_SMTP_PASSWORD"}
    monkeypatch.delenv("TT_SMTP_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="alerts: email: password_env: environment variable TT_SMTP_PASSWORD"):
        create_app(settings, parse_config({"alerts": {"email": email}}))


@pytest.fixture(params=["sqlite", "postgres", "redis"])
async def claims(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Any:
    """Two independent connections to one claim store (as two workers have): SQLite, PostgreSQL, Redis."""
    from ..fakes.databases import clone_pg, drop_pg, make_sqlite

    if request.param == "redis":
        import os

        url = os.environ.get("THINKTANK_TEST_REDIS", "redis://127.0.0.1:6379/0")
        a, b = aioredis.from_url(url), aioredis.from_url(url)
        prefix = f"tt:test-alert:{secrets.token_hex(4)}"
        yield RedisClaims(a, clock, prefix), RedisClaims(b, clock, prefix)
        await a.aclose()
        await b.aclose()
        return
    name = None
    if request.param == "postgres":
        name, db_url = await clone_pg(request.getfixturevalue("pg_template"))
    else:
        db_url = await asyncio.to_thread(make_sqlite, tmp_path)
    db_a, db_b = Database(db_url), Database(db_url)
    yield SqlClaims(db_a, clock), SqlClaims(db_b, clock)
    await db_a.close()
    await db_b.close()
    if name is not None:
        await drop_pg(name)


async def test_one_claim_wins_a_race(claims: tuple[Claims, Claims], clock: FakeClock) -> None:
    a, b = claims
    for until in (None, clock.time() + 60):
        key = f"budget:key:k1:2026-11-21:{until}"
        won = await asyncio.gather(*(side.claim(key, until) for side in (a, b) * 10))
        assert won.count(True) == 1, won
    # A claim with an end is taken again once it has run out, once.
    key = "cooldown:dep"
    assert await a.claim(key, clock.time() + 60)
    assert not await b.claim(key, clock.time() + 60)
    clock.advance(61)
    won = await asyncio.gather(*(side.claim(key, clock.time() + 60) for side in (a, b) * 5))
    assert won.count(True) == 1
    # One without an end never is.
    assert await a.claim("budget:total", None)
    clock.advance(10 * 365 * 86400)
    assert not await b.claim("budget:total", None)
