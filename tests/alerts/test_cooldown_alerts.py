"""Cooldown alerts through the app: a fake upstream failing enough times cools its deployment down and one alert
goes out; failures going on, a flapping deployment and a second worker send nothing more within the interval."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

from ..fakes import openai as fmt
from .conftest import Env, model_config, webhook

ROUTER = {"num_retries": 0, "allowed_fails": 2, "cooldown": 30}


def _config(env: Env, name: str, **alerts: Any) -> dict[str, Any]:
    config = model_config(env.upstream.fake.url, {"webhook": webhook(env.receiver.url), **alerts}, router=ROUTER)
    config["models"][0]["id"] = name
    return config


async def _fail(env: Env, url: str, times: int) -> None:
    for _ in range(times):
        env.upstream.next.append(fmt.error(500, "upstream exploded (api_key=sk-secret-in-an-error)",
                                           type_="server_error"))
        r = await env.ask(url, "tt-test-admin-key-0123456789")
        assert r.status_code >= 500, r.text


async def _succeed(env: Env, url: str) -> None:
    r = await env.ask(url, "tt-test-admin-key-0123456789", 0.001)
    assert r.status_code == 200, r.text


async def test_one_alert_per_episode_and_interval(alert_env: Env, tmp_path: Path) -> None:
    from ..fakes.databases import make_sqlite

    env = alert_env
    db_url = await asyncio.to_thread(make_sqlite, tmp_path)
    dep = f"flaky-{secrets.token_hex(3)}"
    url, app = await env.start(_config(env, dep, cooldown_interval=600), database_url=db_url)
    assert app.state.alerts is not None

    await _fail(env, url, 1)
    await app.state.alerts.idle()
    assert env.receiver.of("deployment_cooldown") == []
    await _fail(env, url, 1)  # the second failure in a row: the deployment cools down
    await env.receiver.wait_for(lambda: len(env.receiver.alerts) == 1)
    alert = env.receiver.alerts[0]
    assert alert["kind"] == "deployment_cooldown" and alert["deployment"] == dep
    assert (alert["seconds"], alert["failures"]) == (30, 2)
    assert "sk-secret" not in str(alert) and "exploded" not in str(alert)

    await _fail(env, url, 3)  # the same episode goes on (each failure cools it down again): nothing new
    env.clock.advance(31)
    await _succeed(env, url)  # the episode ends
    await _fail(env, url, 2)  # a new episode, within the interval: rate-limited
    await app.state.alerts.idle()
    assert len(env.receiver.of("deployment_cooldown")) == 1

    env.clock.advance(600)  # the interval has passed
    await _succeed(env, url)
    await _fail(env, url, 2)
    await env.receiver.wait_for(lambda: len(env.receiver.alerts) == 2)
    assert env.receiver.alerts[1]["deployment"] == dep

    # Another worker sharing the database, seeing its own first episode within the interval: nothing.
    url_b, app_b = await env.start(_config(env, dep, cooldown_interval=600), database_url=db_url)
    await _fail(env, url_b, 2)
    assert app_b.state.alerts is not None
    await app_b.state.alerts.idle()
    assert len(env.receiver.of("deployment_cooldown")) == 2


async def test_cooldown_alerts_can_be_switched_off(alert_env: Env, tmp_path: Path) -> None:
    from ..fakes.databases import make_sqlite

    env = alert_env
    db_url = await asyncio.to_thread(make_sqlite, tmp_path)
    url, app = await env.start(_config(env, "quiet", cooldowns=False), database_url=db_url)
    await _fail(env, url, 4)
    assert app.state.alerts is not None
    await app.state.alerts.idle()
    assert app.state.router.cooldowns.cooling("quiet") and env.receiver.alerts == []
