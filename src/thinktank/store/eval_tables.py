"""The evaluations' tables (issue 18): stored datasets and the answer cache. Beside :mod:`.tables` (which imports
this module, so every table is on ``Base.metadata``); an evaluation itself is a run (``runs``, kind
``evaluation``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from .tables import Base

__all__ = ["EvalAnswer", "EvalDataset"]

_BIG_INT = BigInteger().with_variant(Integer, "sqlite")


class EvalDataset(Base):
    """A dataset of questions a user uploaded: its valid items (as JSON), and what was wrong with the rest."""

    __tablename__ = "eval_datasets"
    __table_args__ = (Index("ix_eval_datasets_user", "user_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    items: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    item_count: Mapped[int] = mapped_column(Integer)
    tags: Mapped[list[str]] = mapped_column(JSON)
    """Every tag of its items, sorted."""
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    """The lines that were left out: ``{"line", "message"}``."""
    warnings: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)


class EvalAnswer(Base):
    """What a candidate answered to a question, per user and parameters: a new evaluation (re-judging with other
    judges) reuses it instead of asking again. Failed answers are recorded but never reused."""

    __tablename__ = "eval_answers"
    __table_args__ = (UniqueConstraint("user_id", "candidate", "item_key", "params", name="uq_eval_answer"),)

    id: Mapped[int] = mapped_column(_BIG_INT, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    candidate: Mapped[str] = mapped_column(String(256))
    item_key: Mapped[str] = mapped_column(String(64))
    """sha256 of the item's canonical messages."""
    params: Mapped[str] = mapped_column(String(64))
    """sha256 of the answer's parameters (max_tokens, temperature)."""
    text: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    citations: Mapped[list[Any] | None] = mapped_column(JSON)
    prompt_tokens: Mapped[int] = mapped_column(_BIG_INT, default=0)
    completion_tokens: Mapped[int] = mapped_column(_BIG_INT, default=0)
    run_id: Mapped[str | None] = mapped_column(String(32))
    """The evaluation that asked for it (taken up again, that run's own answers are not 'cached')."""
    created_at: Mapped[float] = mapped_column(Float)
