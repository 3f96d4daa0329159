"""Ingestion and hybrid retrieval with the real local model, on SQLite and on PostgreSQL (the ``db``
fixture of tests/conftest.py gives each test both)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from sqlalchemy import func, select, text

from thinktank.errors import InvalidRequestError
from thinktank.knowledge.embeddings import LocalEmbedder
from thinktank.knowledge.index import Filters, IndexCache
from thinktank.knowledge.ingest import Ingestor, Source
from thinktank.knowledge.retrieval import Retriever, SearchOptions
from thinktank.store.db import Database
from thinktank.store.tables import SYSTEM_USER_ID, KbChunk, KbDocument, KbDocumentText, KnowledgeBase, new_id

from ..fakes.clock import FakeClock

DOCS = {
    "cats.md": "# Cats\n\nCats are small domesticated felines that purr and hunt mice.\n\n"
               "## Care\n\nFeed a cat twice a day and keep its litter box clean.",
    "rust.md": "# Rust\n\nRust is a systems programming language with a borrow checker that prevents data races.",
    "bread.txt": "Sourdough bread rises thanks to wild yeast and lactic acid bacteria in the starter.",
    "tides.html": "<html><body><h1>Tides</h1><p>Ocean tides are caused by the gravitational pull of the moon."
                  "</p><script>ignore()</script></body></html>",
}


async def make_kb(db: Database, embedder: LocalEmbedder, name: str = "notes", chunk_tokens: int = 60) -> KnowledgeBase:
    kb = KnowledgeBase(id=new_id("kb"), owner_id=SYSTEM_USER_ID, name=name, description="",
                       embedding_model=embedder.name, chunk_tokens=chunk_tokens, chunk_overlap=10, index_version=0,
                       created_at=1.0, updated_at=1.0)
    async with db.session() as s:
        s.add(kb)
    return kb


def sources(docs: dict[str, str]) -> list[Source]:
    return [Source(name=name, data=body.encode()) for name, body in docs.items()]


async def ingest(db: Database, embedder: LocalEmbedder, kb: KnowledgeBase, docs: dict[str, str],
                 status: str = "approved") -> list[str]:
    results = await Ingestor(db, embedder, FakeClock()).ingest(kb, sources(docs), submitted_by=SYSTEM_USER_ID,
                                                              status=status)
    return [r.status for r in results]


async def sources_of(retriever: Retriever, kb_ids: Sequence[str], query: str, embedder: LocalEmbedder,
                     **options: object) -> list[str]:
    found = await retriever.search(kb_ids, query, embedder, SearchOptions(**options))  # type: ignore[arg-type]
    return [r.source for r in found]


async def test_ingest_writes_documents_chunks_vectors_and_full_text(
    db: Database, local_embedder: LocalEmbedder,
) -> None:
    kb = await make_kb(db, local_embedder)
    progress: list[tuple[int, int]] = []
    results = await Ingestor(db, local_embedder, FakeClock()).ingest(
        kb, sources(DOCS), submitted_by=SYSTEM_USER_ID, progress=lambda p: progress.append((p.done, p.total)))
    assert [r.status for r in results] == ["added"] * 4
    assert progress[-1] == (4, 4) and len(progress) >= 4
    async with db.session() as s:
        chunks = (await s.execute(select(KbChunk).order_by(KbChunk.id))).scalars().all()
        stored = (await s.execute(select(KnowledgeBase).where(KnowledgeBase.id == kb.id))).scalar_one()
        texts = {t.title: t for t in (await s.execute(select(KbDocumentText))).scalars().all()}
    assert stored.dimension == 384 and stored.index_version == 1
    assert len(chunks) == sum(r.chunks for r in results)
    cats = texts["Cats"]  # terms counted once, at ingestion: stemmed, stop words left out
    counts = dict(zip(cats.terms.split(" "), np.frombuffer(cats.term_counts, "<u4").tolist(), strict=True))
    assert counts["cat"] == 4 and counts["litter"] == 1 and "the" not in counts and "and" not in counts
    assert cats.length == len(("Cats " + DOCS["cats.md"].replace("#", "")).split())
    care = next(c for c in chunks if "litter" in c.text)
    assert care.context == "Cats > Care"  # the title heading is not said twice
    assert all(c.embedding is not None and len(c.embedding) == 384 * 4 for c in chunks)
    tides = next(c for c in chunks if "moon" in c.text)
    assert "ignore()" not in tides.text


async def test_reingest_is_unchanged_duplicate_or_an_atomic_replace(
    db: Database, local_embedder: LocalEmbedder,
) -> None:
    kb = await make_kb(db, local_embedder)
    retriever = Retriever(db)
    assert await ingest(db, local_embedder, kb, DOCS) == ["added"] * 4
    assert await ingest(db, local_embedder, kb, {"cats.md": DOCS["cats.md"]}) == ["unchanged"]
    assert await ingest(db, local_embedder, kb, {"copy-of-rust.md": DOCS["rust.md"]}) == ["duplicate"]
    assert await ingest(db, local_embedder, kb, {"a.txt": "Same words.", "b.txt": "Same words."}) == [
        "added", "duplicate"]
    assert await sources_of(retriever, [kb.id], "litter box", local_embedder, mode="keyword")
    new_cats = "# Cats\n\nCats sleep for most of the day in warm sunny spots."
    assert await ingest(db, local_embedder, kb, {"cats.md": new_cats}) == ["replaced"]
    assert await sources_of(retriever, [kb.id], "litter box", local_embedder, mode="keyword") == []
    assert await sources_of(retriever, [kb.id], "sunny spots", local_embedder, mode="keyword") == ["cats.md"]
    async with db.session() as s:
        docs = (await s.execute(select(func.count()).select_from(KbDocument))).scalar_one()
        texts = (await s.execute(select(func.count()).select_from(KbDocumentText))).scalar_one()
        orphans = (await s.execute(text(
            "SELECT count(*) FROM kb_chunks WHERE document_id NOT IN (SELECT id FROM kb_documents)"))).scalar_one()
    assert docs == texts == 5 and orphans == 0


class FailingEmbedder:
    def __init__(self, inner: LocalEmbedder) -> None:
        self.inner = inner
        self.name, self.dimension, self.max_tokens = inner.name, inner.dimension, inner.max_tokens

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        raise RuntimeError("embedding service went away")


async def test_a_failed_ingest_leaves_nothing_half_written(db: Database, local_embedder: LocalEmbedder) -> None:
    kb = await make_kb(db, local_embedder)
    await ingest(db, local_embedder, kb, {"cats.md": DOCS["cats.md"]})
    with pytest.raises(RuntimeError):
        await Ingestor(db, FailingEmbedder(local_embedder), FakeClock()).ingest(
            kb, sources({"cats.md": "# Cats\n\nA new version.", "rust.md": DOCS["rust.md"]}),
            submitted_by=SYSTEM_USER_ID)
    async with db.session() as s:
        docs = (await s.execute(select(KbDocument.source, KbDocument.chunk_count))).all()
        version = (await s.execute(select(KnowledgeBase.index_version))).scalar_one()
    assert [d.source for d in docs] == ["cats.md"] and version == 1
    assert await sources_of(Retriever(db), [kb.id], "litter", local_embedder, mode="keyword") == ["cats.md"]


async def test_bad_files_fail_alone_with_their_status(db: Database, local_embedder: LocalEmbedder) -> None:
    kb = await make_kb(db, local_embedder)
    results = await Ingestor(db, local_embedder, FakeClock()).ingest(kb, [
        Source("photo.png", b"\x89PNG\r\n\x1a\n"), Source("empty.txt", b"   \n"),
        Source("bread.txt", DOCS["bread.txt"].encode()),
    ], submitted_by=SYSTEM_USER_ID)
    assert [(r.status, r.status_code) for r in results] == [("failed", 415), ("failed", 422), ("added", None)]
    assert results[0].error and "Unsupported" in results[0].error


async def test_keyword_vector_and_hybrid_find_the_right_document(db: Database, local_embedder: LocalEmbedder) -> None:
    kb = await make_kb(db, local_embedder)
    await ingest(db, local_embedder, kb, DOCS)
    retriever = Retriever(db)
    # Exact words: BM25. A paraphrase with no shared word: the vectors.
    assert (await sources_of(retriever, [kb.id], "borrow checker", local_embedder, mode="keyword"))[0] == "rust.md"
    paraphrase = "why does seawater climb shores"
    assert await sources_of(retriever, [kb.id], paraphrase, local_embedder, mode="keyword") == []
    assert (await sources_of(retriever, [kb.id], paraphrase, local_embedder, mode="vector"))[0] == "tides.html"
    assert (await sources_of(retriever, [kb.id], paraphrase, local_embedder))[0] == "tides.html"
    assert (await sources_of(retriever, [kb.id], "how do I feed my cat", local_embedder, fusion="rrf"))[0] == "cats.md"
    found = await retriever.search([kb.id], "yeast starter", local_embedder, SearchOptions(top_k=1))
    assert len(found) == 1 and found[0].source == "bread.txt" and found[0].document_id.startswith("doc_")
    assert found[0].kb_id == kb.id and found[0].position == 0 and "Sourdough" in found[0].text


async def test_filters_and_top_k(db: Database, local_embedder: LocalEmbedder) -> None:
    kb = await make_kb(db, local_embedder)
    await ingest(db, local_embedder, kb, DOCS)
    retriever = Retriever(db)
    query = "animals, programming, bread and the ocean"
    for mode in ("keyword", "vector", "hybrid"):
        only_md = await sources_of(retriever, [kb.id], query, local_embedder, mode=mode,
                                   filters=Filters(kinds=("markdown",)))
        assert only_md and set(only_md) <= {"cats.md", "rust.md"}, mode
        prefixed = await sources_of(retriever, [kb.id], query, local_embedder, mode=mode,
                                    filters=Filters(source_prefix="b"))
        assert set(prefixed) == {"bread.txt"}, mode
    async with db.session() as s:
        rust_id = (await s.execute(select(KbDocument.id).where(KbDocument.source == "rust.md"))).scalar_one()
    assert set(await sources_of(retriever, [kb.id], query, local_embedder,
                                filters=Filters(document_ids=(rust_id,)))) == {"rust.md"}
    assert len(await sources_of(retriever, [kb.id], query, local_embedder, top_k=2)) == 2


async def test_searches_stay_inside_the_given_knowledge_bases(db: Database, local_embedder: LocalEmbedder) -> None:
    mine, theirs = await make_kb(db, local_embedder, "mine"), await make_kb(db, local_embedder, "theirs")
    await ingest(db, local_embedder, mine, {"bread.txt": DOCS["bread.txt"]})
    await ingest(db, local_embedder, theirs, {"secret.txt": "The vault code is kept under the sourdough jar."})
    retriever = Retriever(db)
    for mode in ("keyword", "vector", "hybrid"):
        assert await sources_of(retriever, [mine.id], "vault code sourdough", local_embedder, mode=mode) == [
            "bread.txt"], mode
    assert await sources_of(retriever, [], "sourdough", local_embedder) == []


async def test_pending_documents_are_not_searchable(db: Database, local_embedder: LocalEmbedder) -> None:
    kb = await make_kb(db, local_embedder)
    await ingest(db, local_embedder, kb, {"tides.html": DOCS["tides.html"]}, status="pending")
    for mode in ("keyword", "vector", "hybrid"):
        assert await sources_of(Retriever(db), [kb.id], "ocean tides moon", local_embedder, mode=mode) == [], mode


async def test_vector_cache_follows_changes_made_elsewhere(db: Database, local_embedder: LocalEmbedder) -> None:
    kb = await make_kb(db, local_embedder)
    await ingest(db, local_embedder, kb, {"bread.txt": DOCS["bread.txt"]})
    one, other = Retriever(db, IndexCache(db)), Retriever(db, IndexCache(db))  # two processes' caches
    query = "gravity of the moon and the sea"
    assert await sources_of(one, [kb.id], query, local_embedder, mode="vector") == ["bread.txt"]
    assert await sources_of(other, [kb.id], query, local_embedder, mode="vector") == ["bread.txt"]
    await ingest(db, local_embedder, kb, {"tides.html": DOCS["tides.html"]})
    assert await sources_of(one, [kb.id], query, local_embedder, mode="vector") == ["tides.html", "bread.txt"]


async def test_any_query_text_is_just_words(db: Database, local_embedder: LocalEmbedder) -> None:
    kb = await make_kb(db, local_embedder)
    await ingest(db, local_embedder, kb, DOCS)
    retriever = Retriever(db)
    for query in ['"unbalanced', "NOT cats", "col:umn", "a AND (b", "rust*", "^start", "-minus", "?!", "'; DROP --"]:
        for mode in ("keyword", "hybrid"):
            await retriever.search([kb.id], query, local_embedder, SearchOptions(mode=mode))
    assert await sources_of(retriever, [kb.id], "?!", local_embedder, mode="keyword") == []
    assert set(await sources_of(retriever, [kb.id], "cats* OR (rust", local_embedder, mode="keyword")) == {
        "cats.md", "rust.md"}
    with pytest.raises(InvalidRequestError):
        await retriever.search([kb.id], "   ", local_embedder, SearchOptions())


def test_search_options_are_checked() -> None:
    with pytest.raises(InvalidRequestError):
        SearchOptions(keyword_weight=0, vector_weight=0)
    with pytest.raises(InvalidRequestError):
        SearchOptions(top_k=0)


async def test_document_keyword_scores_rank_chunks_with_their_vectors(
    db: Database, local_embedder: LocalEmbedder,
) -> None:
    """A document whose words are spread over two chunks is found by keywords as a whole, and shown by
    the chunk that matches best."""
    kb = await make_kb(db, local_embedder, chunk_tokens=40)
    long_doc = ("# Telescope\n\n" + "The mirror was ground by hand over many months. " * 6
                + "\n\n## Later\n\n" + "Its mount tracks stars with a clockwork drive. " * 6)
    await ingest(db, local_embedder, kb, {"scope.md": long_doc, **{"bread.txt": DOCS["bread.txt"]}})
    retriever = Retriever(db)
    hits = await retriever.search([kb.id], "mirror clockwork", local_embedder, SearchOptions(mode="keyword"))
    assert [h.source for h in hits] == ["scope.md"]
    assert "mirror" in hits[0].text or "clockwork" in hits[0].text
    hybrid = await retriever.search([kb.id], "mirror clockwork", local_embedder, SearchOptions())
    assert hybrid[0].source == "scope.md" and {h.source for h in hybrid} == {"scope.md", "bread.txt"}
    rrf = await retriever.search([kb.id], "mirror clockwork", local_embedder, SearchOptions(fusion="rrf"))
    assert rrf[0].source == "scope.md"


async def test_keyword_statistics_are_each_knowledge_bases_own(
    db: Database, local_embedder: LocalEmbedder,
) -> None:
    """Another knowledge base's documents (someone else's, perhaps) never change a score in this one."""
    small, big = await make_kb(db, local_embedder, "small"), await make_kb(db, local_embedder, "big")
    await ingest(db, local_embedder, small, {"note.txt": "A long note that mentions sourdough once among many other "
                                             "words about gardening, weather and the price of tea.",
                                             "tea.txt": "Green tea and black tea."})
    retriever = Retriever(db)
    options = SearchOptions(mode="keyword")
    before = await retriever.search([small.id], "sourdough tea", None, options)
    loaves = {f"loaf{i}.txt": f"Sourdough sourdough sourdough, loaf {i}." for i in range(12)}
    await ingest(db, local_embedder, big, loaves)
    after = await retriever.search([small.id], "sourdough tea", None, options)
    assert [(h.source, h.score) for h in after] == [(h.source, h.score) for h in before]
    assert [h.source for h in after] == ["note.txt", "tea.txt"]
    both = await retriever.search([small.id, big.id], "sourdough", None, SearchOptions(mode="keyword", top_k=20))
    assert len(both) == 13 and {h.kb_id for h in both} == {small.id, big.id}


async def test_the_same_name_twice_in_one_batch_keeps_the_later(db: Database, local_embedder: LocalEmbedder) -> None:
    kb = await make_kb(db, local_embedder)
    results = await Ingestor(db, local_embedder, FakeClock()).ingest(
        kb, [Source("a.txt", b"Kangaroos hop."), Source("a.txt", b"Wombats dig.")], submitted_by=SYSTEM_USER_ID)
    assert [r.status for r in results] == ["added", "replaced"]
    assert await sources_of(Retriever(db), [kb.id], "wombats kangaroos", local_embedder, mode="keyword") == ["a.txt"]
    assert await sources_of(Retriever(db), [kb.id], "kangaroos", local_embedder, mode="keyword") == []


@pytest.mark.parametrize(("window", "group"), [(2, 1), (3, 256), (64, 2)])
async def test_a_batch_is_checked_in_windows_with_the_same_outcomes(
    db: Database, local_embedder: LocalEmbedder, window: int, group: int,
) -> None:
    """Sources are looked up and parsed a window at a time and written a group at a time; wherever
    the windows and groups fall, each source gets the outcome it would get alone, in order."""
    kb = await make_kb(db, local_embedder)
    await ingest(db, local_embedder, kb, {"old.txt": "Otters hold hands.", "keep.txt": "Owls turn heads."})
    batch = [
        Source("a.txt", b"Kangaroos hop."), Source("b.txt", b"Otters hold hands."),  # b: old.txt's content
        Source("keep.txt", b"Owls turn heads."), Source("photo.png", b"\x89PNG\r\n\x1a\n"),
        Source("c.txt", b"Kangaroos hop."),  # a's content, earlier in this batch
        Source("a.txt", b"Wombats dig."), Source("d.txt", b"Emus run."), Source("old.txt", b"Otters swim."),
    ]
    ingestor = Ingestor(db, local_embedder, FakeClock(), window_sources=window, group_chunks=group)
    results = await ingestor.ingest(kb, batch, submitted_by=SYSTEM_USER_ID)
    assert [(r.source, r.status) for r in results] == [
        ("a.txt", "added"), ("b.txt", "duplicate"), ("keep.txt", "unchanged"), ("photo.png", "failed"),
        ("c.txt", "duplicate"), ("a.txt", "replaced"), ("d.txt", "added"), ("old.txt", "replaced"),
    ]
    async with db.session() as s:
        rows = (await s.execute(select(KbDocument.source, KbDocumentText.body).join(
            KbDocumentText, KbDocumentText.document_id == KbDocument.id))).all()
    assert {source: body for source, body in rows} == {
        "a.txt": "Wombats dig.", "d.txt": "Emus run.", "old.txt": "Otters swim.", "keep.txt": "Owls turn heads."}


class BarrierEmbedder:
    """Holds every embedding until ``parties`` of them are waiting: concurrent ingestions all look the
    database up before any of them writes."""

    def __init__(self, inner: LocalEmbedder, parties: int) -> None:
        import asyncio

        self.inner, self.barrier = inner, asyncio.Barrier(parties)
        self.name, self.dimension, self.max_tokens = inner.name, inner.dimension, inner.max_tokens

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        await self.barrier.wait()
        return await self.inner.embed(texts)


async def test_concurrent_uploads_of_the_same_source_both_land_one_after_the_other(
    db: Database, local_embedder: LocalEmbedder,
) -> None:
    """Two uploads of one source name race (both find nothing there): the second write hits the unique
    name, looks again and replaces the first instead of failing; nothing is half-written."""
    import asyncio

    kb = await make_kb(db, local_embedder)
    ingestor = Ingestor(db, BarrierEmbedder(local_embedder, 2), FakeClock())
    first, second = await asyncio.gather(
        ingestor.ingest(kb, [Source("a.txt", b"Herons stand still."), Source("b.txt", b"Bees dance.")],
                        submitted_by=SYSTEM_USER_ID),
        ingestor.ingest(kb, [Source("a.txt", b"Herons fly low."), Source("c.txt", b"Crows count.")],
                        submitted_by=SYSTEM_USER_ID),
    )
    statuses = sorted([(r.source, r.status) for r in [*first, *second]])
    assert statuses == [("a.txt", "added"), ("a.txt", "replaced"), ("b.txt", "added"), ("c.txt", "added")]
    async with db.session() as s:
        rows = (await s.execute(select(KbDocument.source, KbDocument.chunk_count))).all()
        orphans = (await s.execute(text(
            "SELECT count(*) FROM kb_chunks WHERE document_id NOT IN (SELECT id FROM kb_documents)"))).scalar_one()
    assert sorted(r[0] for r in rows) == ["a.txt", "b.txt", "c.txt"] and orphans == 0
