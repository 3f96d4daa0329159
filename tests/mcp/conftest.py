"""thinktank's MCP server under test: the app on loopback (real uvicorn, real SQLite, the real local embedder,
scripted mock models), users and keys made through its HTTP API, and MCP clients of it: the official SDK's
(in process over memory streams, over streamable HTTP, over stdio) and the MCP Inspector's CLI."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import ReadResourceResult, TextResourceContents

from thinktank.api.app import ThinktankApp, create_app
from thinktank.config import Settings, parse_config
from thinktank.knowledge.embeddings import LocalEmbedder
from thinktank.mcp.caller import Caller
from thinktank.mcp.server import build_server

from ..agents.mcp_servers.npm import ensure_installed
from ..fakes.server import serving

ADMIN = "tt-test-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
PASSWORD = "correct horse battery staple"

#: What the scripted models say to each step of an ensemble or a debate (the prompts' own phrases).
RULES: list[dict[str, Any]] = [
    {"match": r"Several anonymous experts answered", "reply": "Fused: use PostgreSQL, start simple."},
    {"match": r"Classify this question",
     "reply": '{"domains": ["software architecture", "operations"], "kind": "decision", "needs": ["trade-offs"]}'},
    {"match": r"How much do they agree", "reply": '{"agreement": 0.5}'},
    {"match": r"pose one short follow-up", "reply": "What would change your mind?"},
    {"match": r"write the final answer for the person who asked",
     "reply": "## Answer\nStart with PostgreSQL.\n## Confidence\nHigh."},
    {"match": r"Turn it into a plan", "reply": "# Plan\n## Goal\nShip v1 on PostgreSQL."},
    {"match": r"Write the task list", "reply": "# Tasks\n1. Set up the database. **Owner role**: engineer."},
]
#: The librarian answers kb/<name> questions by quoting the first passage it is given, citing it.
LIBRARIAN: list[dict[str, Any]] = [
    {"match": r"no passages in the knowledge bases matched", "reply": "Nothing in your documents."},
    {"match": r'<passage-[0-9a-f]+ id="1"[^>]*>\s*(?P<text>[^<]{1,400}?[.!?])(?=\s|<)', "template": True,
     "reply": "According to your documents: \\g<text> [1]"},
]
CONFIG: dict[str, Any] = {
    "models": [
        {"name": "alpha", "provider": "mock", "options": {"replies": ["Alpha says: use PostgreSQL."], "rules": RULES}},
        {"name": "beta", "provider": "mock", "options": {"replies": ["Beta says: SQLite first."], "rules": RULES}},
        {"name": "librarian", "provider": "mock", "options": {"rules": LIBRARIAN}},
        # a dollar a token
        {"name": "pricey", "provider": "mock", "input_price": 1e6, "output_price": 1e6,
         "options": {"replies": ["Worth every cent."]}},
    ],
    "router": {"num_retries": 0},
    "ensembles": [{"name": "council", "members": ["alpha", "beta"], "strategy": "heuristic", "chairman": "alpha"},
                  {"name": "costly", "members": ["pricey", "alpha"], "strategy": "heuristic"}],
    "debates": [{"name": "panel", "models": ["alpha", "beta"], "rounds": 2}],
    "knowledge": {"model": "librarian"},
}

INSPECTOR_DIR = Path(__file__).resolve().parents[1] / "agents" / "mcp_servers"
INSPECTOR_CLI = INSPECTOR_DIR / "node_modules" / "@modelcontextprotocol" / "inspector" / "cli" / "build" / "cli.js"


@dataclass
class Served:
    """thinktank on loopback: its URL, the app (its services) and an HTTP client for its API."""

    url: str
    app: ThinktankApp
    http: httpx.AsyncClient

    @property
    def mcp_url(self) -> str:
        return self.url + "/mcp"

    async def key(self, *, models: list[str] | None = None, token: str = ADMIN, **extra: Any) -> str:
        """A new API key made by the holder of ``token`` (the admin by default)."""
        r = await self.http.post(self.url + "/api/v1/keys", headers={"Authorization": f"Bearer {token}"},
                                 json={"name": "mcp", **({"models": models} if models is not None else {}), **extra})
        assert r.status_code == 201, r.text
        return str(r.json()["key"])

    async def user(self, email: str) -> str:
        """A member made with the admin API: their session token."""
        r = await self.http.post(self.url + "/api/v1/users", headers=AUTH, json={"email": email, "password": PASSWORD})
        assert r.status_code == 201, r.text
        login = await self.http.post(self.url + "/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        return str(login.json()["token"])

    async def knowledge_base(self, name: str, token: str = ADMIN) -> str:
        r = await self.http.post(self.url + "/api/v1/knowledge-bases", headers={"Authorization": f"Bearer {token}"},
                                 json={"name": name})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    @asynccontextmanager
    async def client(self, key: str | None = ADMIN, *, mode: str = "auto") -> AsyncIterator[Client]:
        """The SDK's client over streamable HTTP, sending ``key`` as a bearer token."""
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http, \
                Client(streamable_http_client(self.mcp_url, http_client=http), mode=mode) as client:
            yield client

    @asynccontextmanager
    async def in_process(self, key: str = ADMIN) -> AsyncIterator[Client]:
        """The SDK's client in this process, over memory streams (JSON-RPC framed, the initialize handshake),
        against the server built for ``key``'s user from the app's own services."""
        principal = await self.app.state.authenticate(key, "127.0.0.1")
        server = build_server(Caller.of(self.app.state, principal, "127.0.0.1"))
        async with Client(server, mode="legacy") as client:
            yield client


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", admin_key=ADMIN, **overrides)


@pytest.fixture
async def served(tmp_path: Path, local_embedder: LocalEmbedder) -> AsyncIterator[Served]:
    app = create_app(settings_for(tmp_path), parse_config(CONFIG), local_embedder=local_embedder)
    async with serving(app) as url, httpx.AsyncClient(timeout=60) as http:
        yield Served(url, app, http)


def resource_text(result: ReadResourceResult) -> str:
    """The text of a resource read (one text content)."""
    [content] = result.contents
    assert isinstance(content, TextResourceContents), content
    return content.text


@pytest.fixture
async def served_db(tmp_path: Path, local_embedder: LocalEmbedder, db_url: str) -> AsyncIterator[Served]:
    """thinktank on the test's database: a SQLite file, then a real PostgreSQL database."""
    app = create_app(settings_for(tmp_path, database_url=db_url), parse_config(CONFIG), local_embedder=local_embedder)
    async with serving(app) as url, httpx.AsyncClient(timeout=60) as http:
        yield Served(url, app, http)


def text_of(result: Any) -> str:
    """The text blocks of a tool result, joined."""
    return "\n".join(block.text for block in result.content if getattr(block, "type", None) == "text")


# -- the MCP Inspector (npm) -----------------------------------------------------------------------

@pytest.fixture(scope="session")
def inspector() -> list[str]:
    """The MCP Inspector's CLI (``node …/inspector/cli/build/cli.js --cli``), installed with ``npm ci`` in
    tests/agents/mcp_servers when it is missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise RuntimeError("These tests run the MCP Inspector: install Node.js and npm (apt-get install nodejs npm)")
    ensure_installed()
    return [node, str(INSPECTOR_CLI), "--cli"]
