"""thinktank served on loopback with alerts configured, a priced model behind a fake upstream whose reported usage
the test chooses (so each request costs what the test says), a clock the test can move to the next day, and a
webhook receiver."""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from thinktank.api.app import ThinktankApp, create_app
from thinktank.config import Settings, parse_config

from ..api.conftest import ADMIN, AUTH
from ..fakes import openai as fmt
from ..fakes.server import serving
from ..fakes.upstream import FakeUpstream, Recorded, Reply
from .receivers import SECRET, WebhookReceiver

SECRET_ENV = "TT_TEST_ALERT_WEBHOOK_SECRET"
PROVIDER_CANARY = "sk-provider-canary-0xFEEDFACE"
PRICE = 1000.0
"""USD per million tokens, in and out: a token costs $0.001."""
START = datetime(2026, 11, 21, 6, 0, tzinfo=UTC).timestamp()
"""Where the test clock starts: early in a UTC day, so a test never runs across midnight by accident."""


class ShiftedClock:
    """Real time (background loops sleep really), shifted to :data:`START`; ``advance`` jumps ahead."""

    def __init__(self, start: float = START) -> None:
        self._wall = start - time.time()
        self._mono = 0.0

    def time(self) -> float:
        return time.time() + self._wall

    def monotonic(self) -> float:
        return time.monotonic() + self._mono

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += seconds

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Upstream:
    """A fake OpenAI upstream: each request costs the next queued amount (in prompt tokens at $0.001 each); a
    queued ``Reply`` is answered as it is."""

    def __init__(self) -> None:
        self.next: deque[float | Reply] = deque()
        self.fake = FakeUpstream(self._answer)

    def _answer(self, _rec: Recorded) -> Reply:
        item = self.next.popleft() if self.next else 0.001
        if isinstance(item, Reply):
            return item
        return Reply(json=fmt.completion(prompt_tokens=round(item / (PRICE / 1e6)), completion_tokens=0))


def model_config(upstream_url: str, alerts: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "models": [{"name": "gpt", "provider": "openai", "model": "fake-model", "base_url": upstream_url + "/v1",
                    "api_key": PROVIDER_CANARY, "input_price": PRICE, "output_price": PRICE}],
        "alerts": alerts, **extra,
    }


def webhook(url: str, **extra: Any) -> dict[str, Any]:
    return {"url": url, "secret_env": SECRET_ENV, "backoff": 0.01, "timeout": 5, **extra}


@dataclass
class Env:
    upstream: Upstream
    receiver: WebhookReceiver
    clock: ShiftedClock
    http: httpx.AsyncClient
    stack: AsyncExitStack
    tmp: Path
    apps: list[tuple[str, ThinktankApp]] = field(default_factory=list)

    async def start(self, config: dict[str, Any], **settings: Any) -> tuple[str, ThinktankApp]:
        """Another thinktank (another worker, when it shares the database) on loopback."""
        s = Settings(data_dir=self.tmp / "data", admin_key=ADMIN, **settings)
        app = create_app(s, parse_config(config), clock=self.clock)
        url = await self.stack.enter_async_context(serving(app))
        self.apps.append((url, app))
        return url, app

    async def key(self, url: str, budget: float, period: str = "day", name: str = "ci-bot") -> tuple[str, str]:
        """A key with a budget, made by the admin: (its id, the key)."""
        r = await self.http.post(url + "/api/v1/keys", headers=AUTH,
                                 json={"name": name, "budget_usd": budget, "budget_period": period})
        assert r.status_code == 201, r.text
        return r.json()["id"], r.json()["key"]

    async def ask(self, url: str, key: str, cost: float | None = None) -> httpx.Response:
        """One chat request with ``key`` that costs ``cost`` (if the upstream is reached)."""
        if cost is not None:
            self.upstream.next.append(cost)
        return await self.http.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                    json={"model": "gpt", "messages": [{"role": "user", "content": "hi"}],
                                          "max_tokens": 10})


async def settled(*apps: ThinktankApp) -> None:
    """Every app's spend written to the store (the ledger's flush, which the background does every second) and
    the alerts that writing saw claimed and delivered."""
    await asyncio.gather(*(a.state.ledger.flush() for a in apps))
    for a in apps:
        assert a.state.alerts is not None
        await a.state.alerts.idle()


@pytest.fixture
async def alert_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    clock = ShiftedClock()
    upstream = Upstream()
    await upstream.fake.start()
    receiver = WebhookReceiver(clock=clock.time)
    await receiver.start()
    async with AsyncExitStack() as stack, httpx.AsyncClient(timeout=30) as http:
        yield Env(upstream, receiver, clock, http, stack, tmp_path)
    await receiver.close()
    await upstream.fake.close()


@pytest.fixture(params=["sqlite", "postgres", "redis"])
async def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """Where budgets (and alert claims) live: a SQLite file, PostgreSQL, or Redis (with SQLite for the rest)."""
    from ..fakes.databases import clone_pg, drop_pg, make_sqlite

    if request.param == "postgres":
        name, url = await clone_pg(request.getfixturevalue("pg_template"))
        try:
            yield {"database_url": url}
        finally:
            await drop_pg(name)
        return
    db_url = await asyncio.to_thread(make_sqlite, tmp_path)
    if request.param == "redis":
        yield {"database_url": db_url, "redis_url": os.environ.get("THINKTANK_TEST_REDIS", "redis://127.0.0.1:6379/0")}
        return
    yield {"database_url": db_url}


Check = Callable[[], bool]
