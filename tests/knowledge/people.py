"""The users of the knowledge-service tests, and a service over the local model for them."""

from __future__ import annotations

from collections.abc import Sequence

from thinktank.accounts.principal import Principal
from thinktank.errors import InvalidRequestError
from thinktank.knowledge.embeddings import LOCAL_MODEL, Embedder, LocalEmbedder
from thinktank.knowledge.service import KnowledgeService
from thinktank.store.db import Database
from thinktank.store.tables import Team, User

from ..fakes.clock import FakeClock

ALICE = Principal(user_id="usr_alice", role="member", email="alice@example.com")
BOB = Principal(user_id="usr_bob", role="member", email="bob@example.com", team_id="team_lab")
CAROL = Principal(user_id="usr_carol", role="member", email="carol@example.com", team_id="team_lab")
ADMIN = Principal(user_id="usr_root", role="admin", email="root@example.com")


async def knowledge_service(db: Database, local_embedder: LocalEmbedder,
                            people: Sequence[Principal] = (ALICE, BOB, CAROL, ADMIN)) -> KnowledgeService:
    """``people`` as users (BOB and CAROL in team_lab) and a service that embeds with the local model only."""
    async with db.session() as s:
        s.add(Team(id="team_lab", name="lab", created_at=1.0))
        await s.flush()
        for p in people:
            s.add(User(id=p.user_id, email=p.email, role=p.role, team_id=p.team_id, created_at=1.0))

    def embedder_for(model: str, _ctx: object = None) -> Embedder:
        if model != LOCAL_MODEL:
            raise InvalidRequestError(f"no embedding model '{model}'", param="embedding_model")
        return local_embedder

    return KnowledgeService(db, FakeClock(), embedder_for)
