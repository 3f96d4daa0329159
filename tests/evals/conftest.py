"""thinktank served on loopback with scripted mock candidates and judges, on SQLite and PostgreSQL, for the
evaluations' API tests; and helpers to read its SSE streams."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from thinktank.api.app import ThinktankApp, create_app
from thinktank.config import Settings, parse_config
from thinktank.knowledge.embeddings import LocalEmbedder

from ..api.apps import PASSWORD
from ..api.conftest import ADMIN, AUTH
from ..fakes.server import serving

__all__ = ["ADMIN", "AUTH", "PRICE", "EvalEnv", "Start", "judge_preferring", "mock", "models", "sse_events"]

PRICE = 1000.0
"""USD per million tokens, in and out, of the priced mocks: a token costs $0.001."""


def mock(name: str, *, price: float | None = None, **options: Any) -> dict[str, Any]:
    dep: dict[str, Any] = {"name": name, "provider": "mock", "options": options}
    if price is not None:
        dep.update(input_price=price, output_price=price)
    return dep


def judge_preferring(text: str) -> list[dict[str, str]]:
    """Rules of a pairwise judge that prefers the response containing ``text`` (in either position)."""
    return [
        {"match": rf"Response A:\s*`{{3,}}\s*[^`]*(?:{text})", "reply": '{"reason": "A is right", "winner": "A"}'},
        {"match": rf"Response B:\s*`{{3,}}\s*[^`]*(?:{text})", "reply": '{"reason": "B is right", "winner": "B"}'},
        {"match": "Response A", "reply": '{"reason": "the same", "winner": "tie"}'},
    ]


CANDIDATE_RULES = [
    {"match": "capital of France", "reply": "The capital of France is Paris."},
    {"match": "capital of Italy", "reply": "Rome is the capital of Italy."},
    {"match": "2 \\+ 2", "reply": "2 + 2 = 4"},
]


def models(**extra: dict[str, Any]) -> list[dict[str, Any]]:
    """The default cast: two candidates, judges of each kind."""
    cast = {
        "quick": mock("quick", rules=CANDIDATE_RULES, replies=["I do not know."]),
        "wrong": mock("wrong", replies=["London, I believe."]),
        "judge": mock("judge", rules=judge_preferring("Paris|Rome|= 4"), replies=["PASS"]),
        "first-judge": mock("first-judge", replies=['{"winner": "A"}']),
        "garbled-judge": mock("garbled-judge", replies=["Both are fine, hard to say."]),
    }
    cast.update({k: {**v, "name": k} for k, v in extra.items()})
    return list(cast.values())


@dataclass
class EvalEnv:
    url: str
    app: ThinktankApp
    http: httpx.AsyncClient
    served: Any = None
    """The server's context (``stop`` leaves it)."""

    async def stop(self) -> None:
        """Stop the server as a deployment does (its runs are left to be taken up)."""
        await self.http.aclose()
        await self.served.__aexit__(None, None, None)

    async def post(self, path: str, body: Any, headers: dict[str, str] = AUTH) -> httpx.Response:
        return await self.http.post(self.url + path, json=body, headers=headers)

    async def get(self, path: str, headers: dict[str, str] = AUTH, **params: Any) -> httpx.Response:
        return await self.http.get(self.url + path, params=params, headers=headers)

    async def dataset(self, items: list[dict[str, Any]], name: str = "qa") -> str:
        r = await self.post("/api/v1/eval/datasets", {"name": name, "items": items})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def evaluate(self, body: dict[str, Any], headers: dict[str, str] = AUTH) -> dict[str, Any]:
        """An evaluation started and waited for: its record."""
        r = await self.post("/api/v1/eval/runs", {**body, "wait": True}, headers)
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def user(self, email: str) -> dict[str, str]:
        """A member made with the admin API: headers with their session."""
        r = await self.post("/api/v1/users", {"email": email, "password": PASSWORD})
        assert r.status_code == 201, r.text
        login = await self.http.post(self.url + "/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        return {"Authorization": f"Bearer {login.json()['token']}"}

    def asked(self, model: str) -> list[str]:
        """The prompts the mock model ``model`` was sent (its last 100), each as its messages' text joined."""
        from thinktank.providers.mock import MockProvider
        from thinktank.types import message_text

        for dep in self.app.state.router.deployments:
            if dep.name == model:
                assert isinstance(dep.model, MockProvider)
                return ["\n".join(message_text(m) for m in r.messages) for r in dep.model.requests]
        raise KeyError(model)

    async def rows(self, table: str) -> int:
        from sqlalchemy import text

        async with self.app.state.db.engine.connect() as conn:
            return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


Start = Callable[..., Any]


@pytest.fixture
async def start_env(tmp_path: Path, db_url: str) -> AsyncIterator[Start]:
    """``api = await start_env(models, **settings)``: thinktank on loopback over the test's database."""
    stack: list[Any] = []

    async def start(cast: list[dict[str, Any]], *, config: dict[str, Any] | None = None,
                    local_embedder: LocalEmbedder | None = None, **overrides: Any) -> EvalEnv:
        """``config``: more of the gateway's configuration (ensembles, debates)."""
        settings = Settings(data_dir=tmp_path / "data", admin_key=ADMIN, database_url=db_url, **overrides)
        app = create_app(settings, parse_config({"models": cast, "router": {"num_retries": 0}, **(config or {})}),
                         local_embedder=local_embedder)
        cm = serving(app)
        url = await cm.__aenter__()
        env = EvalEnv(url, app, httpx.AsyncClient(timeout=60), cm)
        stack.append(env)
        return env

    yield start
    for env in reversed(stack):
        if not env.http.is_closed:
            await env.stop()


@pytest.fixture
async def api(start_env: Start) -> EvalEnv:
    return await start_env(models())  # type: ignore[no-any-return]


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    event: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if line.startswith("id: "):
            event["id"] = int(line[4:])
        elif line.startswith("event: "):
            event["event"] = line[7:]
        elif line.startswith("data: "):
            event["data"] = orjson.loads(line[6:])
        elif line == "" and event:
            yield event
            event = {}
