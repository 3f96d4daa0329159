"""thinktank served on loopback in front of a fake OpenAI upstream, for tests that also need the app
object (its services) and users of their own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from thinktank.accounts.principal import Principal
from thinktank.api.app import ThinktankApp, create_app
from thinktank.config import Settings, parse_config
from thinktank.knowledge.embeddings import LocalEmbedder

from ..fakes.server import serving
from ..fakes.upstream import FakeUpstream, Handler
from .conftest import AUTH

PASSWORD = "correct horse battery staple"


@dataclass
class AppEnv:
    url: str
    app: ThinktankApp
    upstream: FakeUpstream
    http: httpx.AsyncClient

    async def user(self, email: str) -> tuple[Principal, dict[str, str]]:
        """A member made with the admin API: their principal and headers with their session."""
        r = await self.http.post(self.url + "/api/v1/users", headers=AUTH, json={"email": email, "password": PASSWORD})
        assert r.status_code == 201, r.text
        login = await self.http.post(self.url + "/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        token = login.json()["token"]
        return await self.app.state.auth.resolve(token), {"Authorization": f"Bearer {token}"}

    async def stored(self) -> dict[str, list[str]]:
        """Every row of the tables a request could write (not ``usage``, which is written in the
        background), to show that a refused request wrote nothing."""
        from sqlalchemy import text

        out: dict[str, list[str]] = {}
        async with self.app.state.db.engine.connect() as conn:
            for table in WRITTEN_TABLES:
                rows = (await conn.execute(text(f"SELECT * FROM {table}"))).all()
                out[table] = sorted(repr(tuple(r)) for r in rows)
        return out


WRITTEN_TABLES = ("users", "teams", "api_keys", "threads", "thread_messages", "thread_summaries", "chat_personas",
                  "memory_facts", "memory_settings", "knowledge_bases", "kb_shares", "kb_documents", "runs")


@asynccontextmanager
async def served(
    settings: Settings, local_embedder: LocalEmbedder, handler: Handler, config: Callable[[str], dict[str, Any]],
) -> AsyncIterator[tuple[str, ThinktankApp, FakeUpstream, httpx.AsyncClient]]:
    """A fake upstream answering with ``handler``, and thinktank configured by ``config(upstream_url)``."""
    upstream = FakeUpstream(handler)
    await upstream.start()
    app = create_app(settings, parse_config(config(upstream.url)), local_embedder=local_embedder)
    try:
        async with serving(app) as url, httpx.AsyncClient(timeout=30) as http:
            yield url, app, upstream, http
    finally:
        await upstream.close()
