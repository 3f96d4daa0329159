"""thinktank with a response cache, in front of a fake OpenAI upstream that counts its calls."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from thinktank.api.app import ThinktankApp, create_app
from thinktank.config import Settings, parse_config

from ..api.apps import PASSWORD
from ..fakes import openai as fmt
from ..fakes.server import serving
from ..fakes.upstream import FakeUpstream

ADMIN = "tt-cache-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
ALLOW = {**AUTH, "x-thinktank-cache": "allow"}


class OffsetClock:
    """The system clock, whose wall time a test can move forward (cache entries expire by wall time)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    async def sleep(self, seconds: float) -> None:
        import asyncio

        await asyncio.sleep(seconds)


def gateway_config(url: str, cache: dict[str, Any] | None = None, **more: Any) -> dict[str, Any]:
    deployment = {"provider": "openai", "model": "fake-model", "base_url": url + "/v1", "api_key": "sk-upstream",
                  "input_price": 1000, "output_price": 2000}
    return {
        "models": [{"name": "gpt", **deployment}, {"name": "mini", **deployment}],
        "ensembles": [{"name": "pair", "members": ["gpt", "mini"], "strategy": "heuristic"}],
        "agents": [{"name": "bot", "model": "gpt"}],
        **({"cache": cache} if cache is not None else {}),
        **more,
    }


@dataclass
class CacheEnv:
    url: str
    app: ThinktankApp
    upstream: FakeUpstream
    http: httpx.AsyncClient

    def calls(self) -> int:
        """Chat completions the upstream has answered."""
        return sum(1 for r in self.upstream.requests if r.path.endswith("/chat/completions"))

    async def chat(self, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
        payload = {"model": "gpt", "messages": [{"role": "user", "content": "hello"}], **body}
        return await self.http.post(self.url + "/v1/chat/completions", headers=ALLOW if headers is None else headers,
                                    json=payload)

    async def user(self, email: str, **fields: Any) -> dict[str, str]:
        """A member (made with the admin key): headers with their session."""
        r = await self.http.post(self.url + "/api/v1/users", headers=AUTH,
                                 json={"email": email, "password": PASSWORD, **fields})
        assert r.status_code == 201, r.text
        login = await self.http.post(self.url + "/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        return {"Authorization": f"Bearer {login.json()['token']}"}

    async def key(self, owner: dict[str, str], **fields: Any) -> tuple[str, dict[str, str]]:
        r = await self.http.post(self.url + "/api/v1/keys", headers=owner, json={"name": "k", **fields})
        assert r.status_code == 201, r.text
        return r.json()["id"], {"Authorization": f"Bearer {r.json()['key']}"}

    async def usage(self) -> list[dict[str, Any]]:
        """Every usage row, oldest first."""
        from sqlalchemy import select

        from thinktank.store.tables import UsageRow

        await self.app.state.usage_writer.flush()
        async with self.app.state.db.session() as s:
            rows = (await s.execute(select(UsageRow).order_by(UsageRow.id))).scalars().all()
        return [{c: getattr(r, c) for c in ("model", "key_id", "user_id", "prompt_tokens", "completion_tokens",
                                             "cost_usd", "status", "cache_hit", "stream")} for r in rows]


Start = Callable[..., Any]


@pytest.fixture
async def cache_env(tmp_path: Path) -> AsyncIterator[Start]:
    """``env = await cache_env(cache={...}, clock=..., **settings)``: thinktank on loopback with that cache
    section, before a fake upstream that echoes."""
    stack: list[Any] = []

    async def start(cache: dict[str, Any] | None = None, *, clock: Any = None, local_embedder: Any = None,
                    extra: dict[str, Any] | None = None, **settings: Any) -> CacheEnv:
        upstream = FakeUpstream(fmt.default_handler)
        await upstream.start()
        stack.append(upstream)
        s = Settings(data_dir=tmp_path / f"data{len(stack)}", admin_key=ADMIN, **settings)
        app = create_app(s, parse_config(gateway_config(upstream.url, cache, **(extra or {}))), clock=clock,
                         local_embedder=local_embedder)
        served = serving(app)
        url = await served.__aenter__()
        stack.append(served)
        http = httpx.AsyncClient(timeout=30)
        stack.append(http)
        return CacheEnv(url, app, upstream, http)

    yield start
    for thing in reversed(stack):
        if isinstance(thing, FakeUpstream):
            await thing.close()
        elif isinstance(thing, httpx.AsyncClient):
            await thing.aclose()
        else:
            await thing.__aexit__(None, None, None)


def sse_objects(text: str) -> list[dict[str, Any]]:
    """The JSON chunks of an OpenAI stream (comments skipped), checking it ends with [DONE]."""
    events = [e for e in text.split("\n\n") if e and not e.startswith(":")]
    assert events[-1] == "data: [DONE]", text
    return [orjson.loads(e[6:]) for e in events[:-1]]


def stream_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
