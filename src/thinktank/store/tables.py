"""The tables. Times are Unix seconds (float) from the injected clock; money is USD (double).

Every row that belongs to someone carries its owner (``user_id`` / ``owner_id``) and every route
filters on it.
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "ApiKey", "Base", "BudgetJournalMark", "BudgetLeaseRow", "BudgetRow", "Comparison", "EvalAnswer", "EvalDataset",
    "KbChunk", "KbDocument",
    "KbDocumentText", "KbIngestion", "KbIngestionItem", "KbShare", "KnowledgeBase",
    "ResponseCacheRow", "Run", "RunCall", "RunDocument", "RunEvent", "Session", "Team", "UsageRow", "User", "new_id",
]

SYSTEM_USER_ID = "usr_system"
"""The owner of what the admin key creates; it has no password and cannot log in."""


_BIG_INT = BigInteger().with_variant(Integer, "sqlite")
"""64 bits: token counts and rate limits, which can pass 2**31 (PostgreSQL's ``integer``). SQLite's
``INTEGER`` holds 64 bits already, so the columns there stay as they were made."""


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class Base(DeclarativeBase):
    pass


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    budget_usd: Mapped[float | None] = mapped_column(Float)
    budget_period: Mapped[str] = mapped_column(String(8), default="month")
    created_at: Mapped[float] = mapped_column(Float)


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16), default="member")
    team_id: Mapped[str | None] = mapped_column(ForeignKey("teams.id", ondelete="SET NULL"))
    tier: Mapped[str | None] = mapped_column(String(50))
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON)
    allowed_tools: Mapped[list[str] | None] = mapped_column(JSON)
    """Agent tools and MCP servers this user's agents may use (None: all)."""
    budget_usd: Mapped[float | None] = mapped_column(Float)
    budget_period: Mapped[str] = mapped_column(String(8), default="month")
    rpm: Mapped[int | None] = mapped_column(_BIG_INT)
    tpm: Mapped[int | None] = mapped_column(_BIG_INT)
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)


class Session(Base):
    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(20))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_by_key: Mapped[str | None] = mapped_column(String(32))
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON)
    allowed_tools: Mapped[list[str] | None] = mapped_column(JSON)
    """Agent tools and MCP servers this key's agents may use (None: all)."""
    budget_usd: Mapped[float | None] = mapped_column(Float)
    budget_period: Mapped[str] = mapped_column(String(8), default="month")
    rpm: Mapped[int | None] = mapped_column(_BIG_INT)
    tpm: Mapped[int | None] = mapped_column(_BIG_INT)
    expires_at: Mapped[float | None] = mapped_column(Float)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)
    cache_ttl: Mapped[float | None] = mapped_column(Float)
    """Seconds this key's answers are cached (0: never; None: as the configuration says)."""


class BudgetRow(Base):
    """One budget in one period. Invariant, kept by conditional updates: spent + leased <= limit."""

    __tablename__ = "budgets"

    scope: Mapped[str] = mapped_column(String(8), primary_key=True)
    scope_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    period: Mapped[str] = mapped_column(String(16), primary_key=True)
    limit_usd: Mapped[float] = mapped_column(Float)
    spent_usd: Mapped[float] = mapped_column(Float, default=0.0)
    leased_usd: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[float] = mapped_column(Float)


class BudgetLeaseRow(Base):
    """What one process (``holder``) has leased of one budget in one period: ``budgets.leased_usd`` is the sum of
    these (and of leases taken before holders were recorded). A holder renews ``expires_at`` while it lives;
    any process hands an expired holder's lease back to its budget (``SqlBudgetStore.reclaim_expired``)."""

    __tablename__ = "budget_leases"
    __table_args__ = (Index("ix_budget_leases_holder", "holder"), Index("ix_budget_leases_expires", "expires_at"))

    scope: Mapped[str] = mapped_column(String(8), primary_key=True)
    scope_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    period: Mapped[str] = mapped_column(String(16), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64), primary_key=True)
    leased_usd: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)


class BudgetJournalMark(Base):
    """How far one process journal's spend on one budget and period is in ``budgets.spent_usd`` (``seq``: its
    position in that journal, written with the spend) and what reclaiming that process's expired leases counted as
    spent (``reclaimed_usd``), until the journal's replay (or the process's clean stop) sets the exact figure."""

    __tablename__ = "budget_journal_marks"

    journal: Mapped[str] = mapped_column(String(64), primary_key=True)
    scope: Mapped[str] = mapped_column(String(8), primary_key=True)
    scope_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    period: Mapped[str] = mapped_column(String(16), primary_key=True)
    seq: Mapped[int] = mapped_column(_BIG_INT)
    reclaimed_usd: Mapped[float] = mapped_column(Float)


class UsageRow(Base):
    __tablename__ = "usage"
    __table_args__ = (
        Index("ix_usage_ts", "ts"),
        Index("ix_usage_user_ts", "user_id", "ts"),
        Index("ix_usage_key_ts", "key_id", "ts"),
        UniqueConstraint("request_id", name="uq_usage_request"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(40))
    ts: Mapped[float] = mapped_column(Float)
    day: Mapped[int] = mapped_column(Integer)
    """Days since 1970-01-01 (UTC), for grouping by day the same way on every database."""
    user_id: Mapped[str | None] = mapped_column(String(32))
    key_id: Mapped[str | None] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(256))
    deployment: Mapped[str | None] = mapped_column(String(256))
    prompt_tokens: Mapped[int] = mapped_column(_BIG_INT, default=0)
    completion_tokens: Mapped[int] = mapped_column(_BIG_INT, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    status: Mapped[int] = mapped_column(Integer)
    cache_hit: Mapped[bool] = mapped_column(Boolean, default=False)
    stream: Mapped[bool] = mapped_column(Boolean, default=False)


class Run(Base):
    """An ensemble or a debate: its request, configuration, status and result, owned by a user."""

    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_user_created", "user_id", "created_at"),
        Index("ix_runs_cache", "user_id", "cache_key", "finished_at"),
        Index("ix_runs_status_heartbeat", "status", "heartbeat_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(32))
    key_id: Mapped[str | None] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    """``ensemble``, ``debate`` or ``agent``."""
    name: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(24))
    """running, completed, failed, cancelled, budget_exceeded, step_limit, time_limit or awaiting_approval."""
    question: Mapped[str] = mapped_column(Text)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[list[str] | None] = mapped_column(JSON)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    prompt_tokens: Mapped[int] = mapped_column(_BIG_INT, default=0)
    completion_tokens: Mapped[int] = mapped_column(_BIG_INT, default=0)
    cache_key: Mapped[str | None] = mapped_column(String(64))
    cached_from: Mapped[str | None] = mapped_column(String(32))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float)
    """Last save by the process running it: a running run whose heartbeat stops was interrupted."""
    finished_at: Mapped[float | None] = mapped_column(Float)


class RunCall(Base):
    """One model call made by a run (failed ones too)."""

    __tablename__ = "run_calls"
    __table_args__ = (Index("ix_run_calls_run", "run_id", "seq"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(32))
    role: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(256))
    deployment: Mapped[str | None] = mapped_column(String(256))
    prompt: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    answer: Mapped[str | None] = mapped_column(Text)
    prompt_tokens: Mapped[int] = mapped_column(_BIG_INT, default=0)
    completion_tokens: Mapped[int] = mapped_column(_BIG_INT, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    ts: Mapped[float] = mapped_column(Float)


class RunEvent(Base):
    """The typed events of a run, in order; replayed to clients that reconnect."""

    __tablename__ = "run_events"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[float] = mapped_column(Float)
    type: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class RunDocument(Base):
    """A document a run produced (``plan.md``, ``tasks.md``)."""

    __tablename__ = "run_documents"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)


class Comparison(Base):
    """One pairwise outcome from a user's feedback, for the leaderboard (1 = a won, 0 = b won, 0.5 tie)."""

    __tablename__ = "comparisons"
    __table_args__ = (
        UniqueConstraint("run_id", "user_id", "target", "model_a", "model_b", name="uq_comparison"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    """``vote`` (thumbs up/down on one answer) or ``arena`` (the better of two, blind)."""
    target: Mapped[str] = mapped_column(String(64))
    model_a: Mapped[str] = mapped_column(String(256))
    model_b: Mapped[str] = mapped_column(String(256))
    outcome: Mapped[float] = mapped_column(Float)
    tags: Mapped[list[str] | None] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)


class KnowledgeBase(Base):
    """A collection of documents, searchable by its owner and whoever it is shared with."""

    __tablename__ = "knowledge_bases"
    __table_args__ = (UniqueConstraint("owner_id", "name", name="uq_kb_owner_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    embedding_model: Mapped[str] = mapped_column(String(256))
    """``local/all-MiniLM-L6-v2`` or a gateway model name; the vectors of every chunk come from it."""
    dimension: Mapped[int | None] = mapped_column(Integer)
    """Known once the first vector is stored."""
    chunk_tokens: Mapped[int] = mapped_column(Integer)
    chunk_overlap: Mapped[int] = mapped_column(Integer)
    index_version: Mapped[int] = mapped_column(Integer, default=0)
    """Bumped by every change to what is searchable, so in-process vector caches know they are stale."""
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class KbShare(Base):
    """Access to a knowledge base for one user or one team: ``read`` or ``write``."""

    __tablename__ = "kb_shares"
    __table_args__ = (
        UniqueConstraint("kb_id", "user_id", name="uq_kb_share_user"),
        UniqueConstraint("kb_id", "team_id", name="uq_kb_share_team"),
        Index("ix_kb_shares_user", "user_id"),
        Index("ix_kb_shares_team", "team_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    kb_id: Mapped[str] = mapped_column(ForeignKey("knowledge_bases.id", ondelete="CASCADE"))
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    team_id: Mapped[str | None] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    access: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[float] = mapped_column(Float)


class KbDocument(Base):
    """One source (a file or a URL) in a knowledge base. Re-ingesting the same source replaces it."""

    __tablename__ = "kb_documents"
    __table_args__ = (
        UniqueConstraint("kb_id", "source", name="uq_kb_document_source"),
        Index("ix_kb_documents_hash", "kb_id", "content_hash"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kb_id: Mapped[str] = mapped_column(ForeignKey("knowledge_bases.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(1024))
    """The file name (as given, sanitised) or the URL."""
    title: Mapped[str] = mapped_column(String(500), default="")
    kind: Mapped[str] = mapped_column(String(8))
    content_hash: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    pages: Mapped[int | None] = mapped_column(Integer)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(10))
    """``approved`` (searchable), ``pending`` (a contribution waiting for review) or ``rejected``."""
    submitted_by: Mapped[str] = mapped_column(String(32))
    reviewed_by: Mapped[str | None] = mapped_column(String(32))
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    warnings: Mapped[list[str] | None] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class KbDocumentText(Base):
    """A document's whole text and its BM25 term counts (``knowledge.bm25``): the distinct terms,
    space-separated, their counts as little-endian uint32 and the length in words."""

    __tablename__ = "kb_document_texts"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    document_id: Mapped[str] = mapped_column(ForeignKey("kb_documents.id", ondelete="CASCADE"), unique=True)
    kb_id: Mapped[str] = mapped_column(String(32), index=True)
    title: Mapped[str] = mapped_column(Text, default="")
    body: Mapped[str] = mapped_column(Text)
    terms: Mapped[str] = mapped_column(Text, default="")
    term_counts: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    length: Mapped[int] = mapped_column(Integer, default=0)


class KbIngestion(Base):
    """An ingestion run as a job (``POST …/documents?async=true``): its sources are staged in
    ``kb_ingestion_items`` first, then a job ingests those without a result yet, so a retried job (after a
    crash) goes on where the last one stopped."""

    __tablename__ = "kb_ingestions"
    __table_args__ = (Index("ix_kb_ingestions_status", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kb_id: Mapped[str] = mapped_column(ForeignKey("knowledge_bases.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(String(32))
    """Who submitted it: the only one who sees it."""
    key_id: Mapped[str | None] = mapped_column(String(32))
    """The API key it was submitted with (the job acts with that key's rights as they are when it runs)."""
    status: Mapped[str] = mapped_column(String(10))
    """``queued``, ``doing``, ``succeeded`` or ``failed``."""
    pending: Mapped[bool] = mapped_column(Boolean, default=False)
    """Submitted with read access: the documents are contributions waiting for review."""
    total: Mapped[int] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    job_id: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)


class KbIngestionItem(Base):
    """One staged source of an ingestion, and its result once ingested (written in the transaction that wrote
    the document, so a document is ingested and counted exactly once)."""

    __tablename__ = "kb_ingestion_items"

    ingestion_id: Mapped[str] = mapped_column(ForeignKey("kb_ingestions.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(1024))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    """The uploaded bytes, emptied once the ingestion has ended."""
    content_type: Mapped[str | None] = mapped_column(String(255))
    title: Mapped[str | None] = mapped_column(String(500))
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    status: Mapped[str | None] = mapped_column(String(10))
    """The result: ``added``, ``replaced``, ``unchanged``, ``duplicate`` or ``failed``; None: not yet ingested."""
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class KbChunk(Base):
    """A passage of a document with its place and its vector (float32 bytes)."""

    __tablename__ = "kb_chunks"
    __table_args__ = (Index("ix_kb_chunks_document", "document_id", "position"), Index("ix_kb_chunks_kb", "kb_id"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    document_id: Mapped[str] = mapped_column(ForeignKey("kb_documents.id", ondelete="CASCADE"))
    kb_id: Mapped[str] = mapped_column(String(32))
    position: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    context: Mapped[str] = mapped_column(Text, default="")
    """The document title and heading path, searched and embedded with the text."""
    page: Mapped[int | None] = mapped_column(Integer)
    tokens: Mapped[int] = mapped_column(Integer)
    searchable: Mapped[bool] = mapped_column(Boolean)
    """False while its document is pending or rejected."""
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)


# -- conversations: threads, their messages and rolling summaries, personas, the learned profile --


class ChatPersona(Base):
    """A user's persona for threads: a system prompt written inline, or a document of a knowledge base the
    owner can read (e.g. a person's profile, for a digital twin), read afresh at every turn."""

    __tablename__ = "chat_personas"
    __table_args__ = (UniqueConstraint("owner_id", "name", name="uq_chat_persona_owner_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    system_prompt: Mapped[str | None] = mapped_column(Text)
    kb_id: Mapped[str | None] = mapped_column(String(32))
    """With ``document_id``: the persona is that document's text (access is checked again at every use)."""
    document_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class Thread(Base):
    """A conversation of one user with one model, optionally with a persona and knowledge bases."""

    __tablename__ = "threads"
    __table_args__ = (Index("ix_threads_user_updated", "user_id", "updated_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200), default="")
    model: Mapped[str] = mapped_column(String(256))
    persona_id: Mapped[str | None] = mapped_column(ForeignKey("chat_personas.id", ondelete="SET NULL"))
    knowledge_bases: Mapped[list[str] | None] = mapped_column(JSON)
    """Ids of knowledge bases the replies are grounded in."""
    archived: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    busy_until: Mapped[float | None] = mapped_column(Float)
    """A turn under way holds the thread until then (a lease its process renews while it runs), so a
    second turn is refused up front by every process that shares the database."""


class ThreadMessage(Base):
    """One message of a thread, in order (``seq`` from 1). An assistant message carries the model that wrote
    it, its tokens and cost, and the context it was given (citations, memories, the summary it followed)."""

    __tablename__ = "thread_messages"
    __table_args__ = (UniqueConstraint("thread_id", "seq", name="uq_thread_message_seq"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(256))
    deployment: Mapped[str | None] = mapped_column(String(256))
    prompt_tokens: Mapped[int] = mapped_column(_BIG_INT, default=0)
    completion_tokens: Mapped[int] = mapped_column(_BIG_INT, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    context: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)
    memory_extracted_at: Mapped[float | None] = mapped_column(Float)
    """When what a user message taught about its user was stored (set in that transaction: a retried
    extraction job stores nothing twice); None: not yet, or never (an assistant message)."""


class ThreadTurn(Base):
    """A thread's turn as every process can follow it: its events are stored as it runs (``thread_turn_events``)
    and kept a while after it ends. Only a thread's last turn is kept."""

    __tablename__ = "thread_turns"
    __table_args__ = (Index("ix_thread_turns_thread", "thread_id", "started_at"),
                      Index("ix_thread_turns_open", "ended_at", "heartbeat_at"))

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"))
    started_at: Mapped[float] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float)
    # What another process needs to answer it when the one running it dies (conversations.turn_resume):
    user_id: Mapped[str | None] = mapped_column(String(32))
    key_id: Mapped[str | None] = mapped_column(String(32))
    content: Mapped[str | None] = mapped_column(Text)
    """The user's message."""
    request: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """model, stream, max_tokens, temperature, replace_from."""
    owner: Mapped[str | None] = mapped_column(String(32))
    """The token of the process running it (the one that took it up last)."""
    heartbeat_at: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """How often it was taken up by another process."""
    run_id: Mapped[str | None] = mapped_column(String(32))
    """The run answering it (a run model)."""


class ThreadTurnEvent(Base):
    """The events of a turn, in order (``seq`` from 1, the SSE id a client resumes after)."""

    __tablename__ = "thread_turn_events"

    turn_id: Mapped[str] = mapped_column(ForeignKey("thread_turns.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class ThreadSummary(Base):
    """A rolling summary of a thread's messages up to ``through_seq``; the newest one stands in for them
    in prompts (the messages themselves stay)."""

    __tablename__ = "thread_summaries"
    __table_args__ = (Index("ix_thread_summaries_thread", "thread_id", "through_seq"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"))
    through_seq: Mapped[int] = mapped_column(Integer)
    content: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(256))
    prompt_tokens: Mapped[int] = mapped_column(_BIG_INT, default=0)
    completion_tokens: Mapped[int] = mapped_column(_BIG_INT, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[float] = mapped_column(Float)


class MemoryFact(Base):
    """Something learned about a user (a fact, an interest or a preference), with the message it came from."""

    __tablename__ = "memory_facts"
    __table_args__ = (
        UniqueConstraint("user_id", "normalized", name="uq_memory_fact_user_text"),
        Index("ix_memory_facts_source", "source_message_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    """``fact``, ``interest`` or ``preference``."""
    text: Mapped[str] = mapped_column(String(500))
    normalized: Mapped[str] = mapped_column(String(500))
    """The text folded (case, punctuation, spaces) for exact de-duplication."""
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    """float32 vector of the local embedder, for near-duplicates and relevance."""
    source_message_id: Mapped[str | None] = mapped_column(ForeignKey("thread_messages.id", ondelete="SET NULL"))
    source_thread_id: Mapped[str | None] = mapped_column(String(32))
    mentions: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class MemorySetting(Base):
    """A user's choice to have a learned profile or not (no row: the configured default)."""

    __tablename__ = "memory_settings"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean)
    updated_at: Mapped[float] = mapped_column(Float)


class AgentState(Base):
    """An agent run's checkpoint: its conversation with tool calls and results, its steps, what waits for
    approval; written with the run's events after every completed step."""

    __tablename__ = "agent_states"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    state: Mapped[dict[str, Any]] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(Integer, default=0)
    """Checkpoints written so far."""
    deadline: Mapped[float | None] = mapped_column(Float, index=True)
    """While the run awaits approval: when the proposed call is denied if nobody decides."""
    updated_at: Mapped[float] = mapped_column(Float)


class AlertClaim(Base):
    """An alert some worker has sent (or is sending): taken by one atomic insert, so that two workers seeing the
    same budget cross a threshold at once send it once, and a restart does not send it again."""

    __tablename__ = "alert_claims"

    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    """``budget:<scope>:<scope id>:<period>:<threshold>`` or ``cooldown:<deployment>``."""
    until: Mapped[float | None] = mapped_column(Float, index=True)
    """When the claim may be taken again (a cooldown's quiet interval) and may be forgotten; None: never."""
    claimed_at: Mapped[float] = mapped_column(Float)


class ResponseCacheRow(Base):
    """One cached answer (the response cache's database backend); ``key`` hashes the tenant in."""

    __tablename__ = "response_cache"
    __table_args__ = (Index("ix_response_cache_expires", "expires_at"), Index("ix_response_cache_tenant", "tenant"))

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)


# The evaluations' tables live in a module of their own; imported here so that Base.metadata has them.
from .eval_tables import EvalAnswer, EvalDataset  # noqa: E402
