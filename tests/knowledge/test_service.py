"""Knowledge bases as users see them: ownership, sharing, contributions and review, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from thinktank.accounts.principal import Principal
from thinktank.errors import ConflictError, InvalidRequestError, NotFoundError, PermissionDeniedError
from thinktank.knowledge.embeddings import LOCAL_MODEL, LocalEmbedder
from thinktank.knowledge.ingest import Source
from thinktank.knowledge.retrieval import SearchOptions
from thinktank.knowledge.service import KnowledgeService
from thinktank.store.db import Database

from .people import ADMIN, ALICE, BOB, CAROL, knowledge_service


@pytest.fixture
async def service(db: Database, local_embedder: LocalEmbedder) -> KnowledgeService:
    """On SQLite and on PostgreSQL (the ``db`` fixture of tests/conftest.py)."""
    return await knowledge_service(db, local_embedder)


def doc(name: str, body: str) -> Source:
    return Source(name=name, data=body.encode())


async def found(service: KnowledgeService, who: Principal, kb: str, query: str) -> list[str]:
    return [r.source for r in await service.search(who, [kb], query, SearchOptions(mode="keyword"))]


async def test_create_checks_names_models_and_sizes(service: KnowledgeService) -> None:
    view = await service.create(ALICE, "notes", description="mine")
    assert view.access == "admin" and view.kb.embedding_model == LOCAL_MODEL and view.kb.chunk_tokens == 200
    with pytest.raises(ConflictError):
        await service.create(ALICE, "notes")
    await service.create(BOB, "notes")  # names are per owner
    for bad in ("", "../x", "a b", "x" * 101, "-lead"):
        with pytest.raises(InvalidRequestError):
            await service.create(ALICE, bad)
    with pytest.raises(InvalidRequestError):
        await service.create(ALICE, "other", embedding_model="nope")
    with pytest.raises(InvalidRequestError):
        await service.create(ALICE, "other", chunk_tokens=100, chunk_overlap=60)


async def test_another_users_knowledge_base_does_not_exist_for_you(service: KnowledgeService) -> None:
    kb = (await service.create(ALICE, "private")).kb
    await service.add(ALICE, kb.id, [doc("a.txt", "The launch code is swordfish.")])
    assert [v.kb.name for v in await service.visible(BOB)] == []
    for attempt in (
        service.view(BOB, kb.id), service.view(BOB, "private"), service.delete(BOB, kb.id),
        service.documents(BOB, kb.id), service.add(BOB, kb.id, [doc("b.txt", "mine now")]),
        service.search(BOB, [kb.id], "swordfish", SearchOptions()), service.share(BOB, kb.id, "read", user=BOB.user_id),
    ):
        with pytest.raises(NotFoundError):
            await attempt
    assert await found(service, ADMIN, kb.id, "swordfish") == ["a.txt"]  # platform admins see everything


async def test_sharing_with_users_and_teams(service: KnowledgeService) -> None:
    kb = (await service.create(ALICE, "shared")).kb
    await service.add(ALICE, kb.id, [doc("a.txt", "Bananas are berries.")])
    share = await service.share(ALICE, kb.id, "read", user="bob@example.com")
    assert [(v.kb.name, v.access, v.documents) for v in await service.visible(BOB)] == [("shared", "read", 1)]
    assert await found(service, BOB, "shared", "bananas") == ["a.txt"]  # by name, shared with him
    with pytest.raises(PermissionDeniedError):
        await service.delete(BOB, kb.id)
    with pytest.raises(NotFoundError):
        await service.view(CAROL, kb.id)
    await service.share(ALICE, kb.id, "write", team="lab")
    assert [v.access for v in await service.visible(CAROL)] == ["write"]
    assert [v.access for v in await service.visible(BOB)] == ["write"]  # the team's write beats his own read
    await service.share(ALICE, kb.id, "write", user=BOB.user_id)  # sharing again changes the access
    assert [(s.user_id, s.team_id, s.access) for s in await service.shares(ALICE, kb.id)] == [
        (BOB.user_id, None, "write"), (None, "team_lab", "write")]
    await service.unshare(ALICE, kb.id, share.id)
    shares = await service.shares(ALICE, kb.id)
    await service.unshare(ALICE, kb.id, shares[0].id)
    with pytest.raises(NotFoundError):
        await service.view(BOB, kb.id)
    with pytest.raises(NotFoundError):
        await service.share(ALICE, kb.id, "read", user="nobody@example.com")
    with pytest.raises(InvalidRequestError):
        await service.share(ALICE, kb.id, "owner", user=BOB.user_id)
    with pytest.raises(InvalidRequestError):
        await service.share(ALICE, kb.id, "read", user=ALICE.user_id)


async def test_contributions_wait_for_review(service: KnowledgeService) -> None:
    kb = (await service.create(ALICE, "wiki")).kb
    await service.share(ALICE, kb.id, "read", user=BOB.user_id)
    await service.share(ALICE, kb.id, "read", user=CAROL.user_id)
    [result] = await service.add(BOB, kb.id, [doc("tip.md", "# Tip\n\nPenguins cannot fly but swim fast.")])
    assert result.status == "added" and result.document_id
    assert await found(service, ALICE, kb.id, "penguins") == []  # pending: nobody finds it
    assert [d.status for d in await service.documents(BOB, kb.id)] == ["pending"]  # its author sees it
    assert await service.documents(CAROL, kb.id) == []  # other readers do not
    assert [d.source for d in await service.documents(ALICE, kb.id, status="pending")] == ["tip.md"]
    view = await service.view(ALICE, kb.id)
    assert (view.documents, view.pending, view.chunks) == (1, 1, result.chunks)
    with pytest.raises(PermissionDeniedError):
        await service.review(BOB, kb.id, result.document_id, approve=True)
    with pytest.raises(PermissionDeniedError):
        await service.delete_document(CAROL, kb.id, result.document_id)
    assert (await service.review(ALICE, kb.id, result.document_id, approve=True)).status == "approved"
    assert await found(service, CAROL, kb.id, "penguins") == ["tip.md"]
    assert (await service.review(ADMIN, kb.id, result.document_id, approve=False)).status == "rejected"
    assert await found(service, CAROL, kb.id, "penguins") == []
    with pytest.raises(NotFoundError):
        await service.review(ALICE, kb.id, "doc_missing", approve=True)
    # A contribution cannot overwrite a document that is there, only its author's own pending one.
    await service.add(ALICE, kb.id, [doc("faq.md", "# FAQ\n\nAsk the librarian.")])
    [refused] = await service.add(CAROL, kb.id, [doc("faq.md", "# FAQ\n\nEverything is free now.")])
    assert (refused.status, refused.status_code) == ("failed", 409)
    assert await found(service, BOB, kb.id, "librarian") == ["faq.md"]
    [mine] = await service.add(CAROL, kb.id, [doc("idea.md", "Plant more trees.")])
    [again] = await service.add(CAROL, kb.id, [doc("idea.md", "Plant more oak trees.")])
    assert (mine.status, again.status) == ("added", "replaced")


async def test_documents_are_deleted_by_writers_and_knowledge_bases_by_owners(service: KnowledgeService) -> None:
    kb = (await service.create(ALICE, "docs")).kb
    await service.share(ALICE, kb.id, "write", user=BOB.user_id)
    [added] = await service.add(BOB, kb.id, [doc("x.txt", "Octopuses have three hearts.")])
    assert added.status == "added"
    assert await found(service, ALICE, kb.id, "octopuses") == ["x.txt"]
    assert added.document_id is not None
    await service.delete_document(BOB, kb.id, added.document_id)
    assert await found(service, ALICE, kb.id, "octopuses") == []
    with pytest.raises(NotFoundError):
        await service.delete_document(BOB, kb.id, added.document_id)
    other = (await service.create(BOB, "bobs")).kb
    [theirs] = await service.add(BOB, other.id, [doc("y.txt", "Snails sleep for years.")])
    assert theirs.document_id is not None
    with pytest.raises(NotFoundError):  # a document id from another knowledge base
        await service.delete_document(BOB, kb.id, theirs.document_id)
    await service.delete(ALICE, kb.id)
    with pytest.raises(NotFoundError):
        await service.view(ALICE, kb.id)
    assert [v.kb.name for v in await service.visible(BOB)] == ["bobs"]


async def test_search_over_several_knowledge_bases_checks_each(service: KnowledgeService) -> None:
    first = (await service.create(ALICE, "first")).kb
    second = (await service.create(ALICE, "second")).kb
    private = (await service.create(BOB, "private")).kb
    await service.add(ALICE, first.id, [doc("a.txt", "Comets have icy nuclei.")])
    await service.add(ALICE, second.id, [doc("b.txt", "Comets grow tails near the sun.")])
    await service.add(BOB, private.id, [doc("c.txt", "Comets are Bob's secret hobby.")])
    hits = await service.search(ALICE, ["first", "second"], "comets", SearchOptions())
    assert {h.source for h in hits} == {"a.txt", "b.txt"}
    with pytest.raises(NotFoundError):
        await service.search(ALICE, ["first", private.id], "comets", SearchOptions())
    with pytest.raises(InvalidRequestError):
        await service.search(ALICE, [], "comets", SearchOptions())
