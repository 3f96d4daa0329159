"""A real conversation service on SQLite: a Router over mock models, the Gate (rate limits, budgets, usage),
the knowledge service and the local embedder."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from thinktank.accounts.admin_key import AdminKey
from thinktank.accounts.budget_backends import SqlBudgetStore
from thinktank.accounts.budgets import BudgetLedger
from thinktank.accounts.governance import Gate
from thinktank.accounts.principal import Authenticator, Principal
from thinktank.accounts.ratelimit import RateLimiter
from thinktank.accounts.usage import UsageWriter
from thinktank.catalog import Catalog
from thinktank.config import parse_config
from thinktank.conversations.service import Conversations
from thinktank.errors import InvalidRequestError
from thinktank.gateway.router import Router
from thinktank.knowledge.embeddings import LOCAL_MODEL, Embedder, LocalEmbedder
from thinktank.knowledge.service import KnowledgeService
from thinktank.providers.base import ProviderContext
from thinktank.providers.mock import MockProvider
from thinktank.store.db import Database
from thinktank.store.tables import User
from thinktank.types import ChatRequest, message_text

from ..fakes.clock import FakeClock
from ..fakes.databases import make_sqlite

ALICE = Principal(user_id="usr_alice", role="member", email="alice@example.com")
BOB = Principal(user_id="usr_bob", role="member", email="bob@example.com")
ADMIN = Principal(user_id="usr_root", role="admin", email="root@example.com")

EXTRACT = "short profile of a user"
"""Found in the memory extraction prompt (and nowhere else)."""
SUMMARISE = "running summary of a long conversation"
"""Found in the summary prompt (and nowhere else)."""


def mock(name: str, *, price: float | None = None, context_window: int | None = None, **options: Any) -> dict[str, Any]:
    dep: dict[str, Any] = {"name": name, "provider": "mock", "options": options}
    if price is not None:
        dep.update(input_price=price, output_price=price)
    if context_window is not None:
        dep["context_window"] = context_window
    return dep


def rule(match: str, reply: str | list[str]) -> dict[str, Any]:
    return {"match": match, "replies": reply} if isinstance(reply, list) else {"match": match, "reply": reply}


@dataclass
class World:
    db: Database
    clock: FakeClock
    router: Router
    conv: Conversations
    knowledge: KnowledgeService
    usage: UsageWriter
    auth: Authenticator

    def requests(self, model: str) -> list[ChatRequest]:
        """Every request the named mock model received, in order."""
        for dep in self.router.deployments:
            if dep.name == model:
                assert isinstance(dep.model, MockProvider)
                return dep.model.requests
        raise KeyError(model)

    def chats(self, model: str) -> list[str]:
        """The prompts of the turns (not summaries or extractions) the model received, each as one text."""
        prompts = ["\n".join(message_text(m) for m in r.messages) for r in self.requests(model)]
        return [p for p in prompts if EXTRACT not in p and SUMMARISE not in p]

    async def usage_rows(self) -> list[tuple[str, int, float]]:
        from sqlalchemy import select

        from thinktank.store.tables import UsageRow

        await self.usage.flush()
        async with self.db.session() as s:
            rows = (await s.execute(select(UsageRow.model, UsageRow.status, UsageRow.cost_usd).order_by(UsageRow.id)))
            return [(m, st, c) for m, st, c in rows.all()]


Build = Callable[..., Awaitable[World]]


@pytest.fixture
async def build(tmp_path: Path, ctx: ProviderContext, clock: FakeClock,
                local_embedder: LocalEmbedder) -> AsyncIterator[Build]:
    """``world = await build(models=[...], conversations={...}, memory={...})``; one per test (on a SQLite file of
    its own, or on the migrated, empty database ``database``)."""
    made: list[World] = []

    async def make(models: list[dict[str, Any]], embedder: Embedder | str | None = "local", *,
                   database: str | None = None, **sections: Any) -> World:
        if database is None:
            database = await asyncio.to_thread(make_sqlite, tmp_path / f"w{len(made)}")
        db = Database(database)
        async with db.session() as s:
            for p in (ALICE, BOB, ADMIN):
                s.add(User(id=p.user_id, email=p.email, role=p.role, created_at=1.0))
        config = parse_config({"models": models, "router": {"num_retries": 0}, **sections})
        router = Router(config, ctx, rng=random.Random(7))

        def embedder_for(model: str, _ctx: object = None) -> Embedder:
            if model != LOCAL_MODEL:
                raise InvalidRequestError(f"no embedding model '{model}'", param="embedding_model")
            return local_embedder

        knowledge = KnowledgeService(db, clock, embedder_for)
        usage = UsageWriter(db, clock)
        gate = Gate(RateLimiter("memory://"), BudgetLedger(SqlBudgetStore(db, clock), clock), usage, clock)
        chosen = local_embedder if embedder == "local" else embedder
        assert not isinstance(chosen, str)
        auth = Authenticator(db, AdminKey.of("test-admin-key"), clock)
        conv = Conversations(db, clock, config, Catalog(router), gate, knowledge, chosen,
                             principals=auth.principal_for)
        world = World(db, clock, router, conv, knowledge, usage, auth)
        made.append(world)
        return world

    yield make
    for world in made:
        await world.conv.close()
        await world.db.close()
