"""BM25 term counts with each document's text; SQLite's FTS5 tables go

Keyword search moves into memory (``knowledge.bm25``), the same on SQLite and PostgreSQL: each
document's term counts are stored with its text (existing documents are counted here). The FTS5
tables, their shadow tables and triggers are dropped.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 10:00:00
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FTS = (("kb_chunks_fts", "kb_chunks", "context, text"), ("kb_documents_fts", "kb_document_texts", "title, body"))

# -- frozen on purpose ------------------------------------------------------------------------------------------------
# A copy of thinktank.knowledge.bm25's analysis (Analyzer.count and what it uses) as it was when this migration was
# written. It is frozen on purpose: this migration must go on counting existing documents exactly as it did, so later
# changes to the live tokenizer must not reach it (a change there that needs stored counts redone brings its own
# migration). Do not import it from, or update it to match, the live code.

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no", "not", "of",
    "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to", "was", "will", "with",
})


def _fold(text: str) -> str:
    text = text.lower()
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _words(text: str) -> list[str]:
    return _WORD.findall(_fold(text))


def _terms(stemmer: Any, text: str) -> list[str]:
    words = [w for w in _words(text) if w not in _STOPWORDS]
    return list(stemmer.stemWords(words)) if words else []


def _count(stemmer: Any, *texts: str) -> tuple[str, bytes, int]:
    """(distinct terms space-separated, their counts as uint32 LE, length in words) of ``texts``."""
    import numpy as np

    counter: Counter[str] = Counter()
    length = 0
    for text in texts:
        length += len(_words(text))
        counter.update(_terms(stemmer, text))
    return " ".join(counter), np.fromiter(counter.values(), "<u4", len(counter)).tobytes(), length


# -- end of the frozen copy -------------------------------------------------------------------------------------------


def upgrade() -> None:
    with op.batch_alter_table('kb_document_texts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('terms', sa.Text(), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('term_counts', sa.LargeBinary(), nullable=False, server_default=sa.text("''")))
        batch_op.add_column(sa.Column('length', sa.Integer(), nullable=False, server_default='0'))
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for table, content, _columns in _FTS:
            for suffix in ("ai", "ad", "au"):
                op.execute(f"DROP TRIGGER IF EXISTS {content}_{suffix}")
            op.execute(f"DROP TABLE IF EXISTS {table}")
    import Stemmer

    stemmer = Stemmer.Stemmer("porter")
    texts = sa.table("kb_document_texts", sa.column("id", sa.Integer), sa.column("title", sa.Text),
                     sa.column("body", sa.Text), sa.column("terms", sa.Text),
                     sa.column("term_counts", sa.LargeBinary), sa.column("length", sa.Integer))
    for row_id, title, body in bind.execute(sa.select(texts.c.id, texts.c.title, texts.c.body)).all():
        terms, counts, length = _count(stemmer, title or "", body or "")
        bind.execute(texts.update().where(texts.c.id == row_id).values(
            terms=terms, term_counts=counts, length=length))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table, content, columns in _FTS:
            cols = [c.strip() for c in columns.split(",")]
            new, old = ", ".join(f"new.{c}" for c in cols), ", ".join(f"old.{c}" for c in cols)
            remove = f"INSERT INTO {table}({table}, rowid, {columns}) VALUES ('delete', old.id, {old});"  # noqa: S608
            add = f"INSERT INTO {table}(rowid, {columns}) VALUES (new.id, {new});"  # noqa: S608
            op.execute(f"CREATE VIRTUAL TABLE {table} USING fts5({columns}, content='{content}', "
                       "content_rowid='id', tokenize='porter unicode61 remove_diacritics 2')")
            op.execute(f"CREATE TRIGGER {content}_ai AFTER INSERT ON {content} BEGIN {add} END")
            op.execute(f"CREATE TRIGGER {content}_ad AFTER DELETE ON {content} BEGIN {remove} END")
            op.execute(f"CREATE TRIGGER {content}_au AFTER UPDATE OF {columns} ON {content} BEGIN {remove} {add} END")
            op.execute(f"INSERT INTO {table}({table}) VALUES ('rebuild')")  # noqa: S608
    with op.batch_alter_table('kb_document_texts', schema=None) as batch_op:
        batch_op.drop_column('length')
        batch_op.drop_column('term_counts')
        batch_op.drop_column('terms')
