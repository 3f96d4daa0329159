"""An app with agents on mock models, served on loopback, for the agent tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from thinktank.agents.builtin import BuiltinTools
from thinktank.api.app import ThinktankApp, create_app
from thinktank.config import Settings, parse_config
from thinktank.knowledge.embeddings import LocalEmbedder

from ..fakes.server import serving

ADMIN = "tt-agents-admin-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
PASSWORD = "correct horse battery staple"
BEFORE_TOOLS = "^(?!.*tool_result tool=)"
"""A mock rule's start that matches only before the model has read a tool result."""


@dataclass
class AgentEnv:
    url: str
    app: ThinktankApp
    http: httpx.AsyncClient

    async def post(self, path: str, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.http.post(self.url + path, json=body, headers=headers or AUTH)

    async def get(self, path: str, headers: dict[str, str] | None = None, **params: Any) -> httpx.Response:
        return await self.http.get(self.url + path, headers=headers or AUTH, params=params)

    async def run(self, run_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        r = await self.get(f"/api/v1/runs/{run_id}", headers)
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def settled(self, run_id: str, headers: dict[str, str] | None = None, timeout: float = 20) -> dict[str, Any]:
        """The run once it has stopped running (ended, or paused)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            record = await self.run(run_id, headers)
            if record["status"] != "running" or loop.time() > deadline:
                return record
            await asyncio.sleep(0.02)

    async def events(self, run_id: str, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
        r = await self.get(f"/api/v1/runs/{run_id}/events", headers, format="json")
        assert r.status_code == 200, r.text
        return list(r.json()["data"])

    def builtin(self) -> BuiltinTools:
        """The app's built-in agent tools (a test points ``fetch_url`` at its loopback site)."""
        builtin = self.app.state.agents.toolbox.builtin
        assert isinstance(builtin, BuiltinTools)
        return builtin

    async def user(self, email: str) -> dict[str, str]:
        """A member made with the admin API: headers with their session."""
        r = await self.post("/api/v1/users", {"email": email, "password": PASSWORD})
        assert r.status_code == 201, r.text
        login = await self.http.post(self.url + "/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        return {"Authorization": f"Bearer {login.json()['token']}"}


def brain(rules: list[dict[str, Any]], name: str = "brain", **options: Any) -> dict[str, Any]:
    """A priced mock model following ``rules``."""
    return {"name": name, "provider": "mock", "input_price": 1.0, "output_price": 2.0,
            "options": {"rules": rules, **options}}


@asynccontextmanager
async def agents_app(tmp_path: Path, config: dict[str, Any], *, local_embedder: LocalEmbedder | None = None,
                     database_url: str | None = None) -> AsyncIterator[AgentEnv]:
    settings = Settings(data_dir=tmp_path / "data", admin_key=ADMIN, database_url=database_url)
    app = create_app(settings, parse_config(config), local_embedder=local_embedder, quiet=True)
    app.state.agents.sweep_every = 0.05
    async with serving(app) as url, httpx.AsyncClient(timeout=30) as http:
        yield AgentEnv(url, app, http)
