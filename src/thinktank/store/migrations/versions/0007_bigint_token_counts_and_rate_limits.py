"""64-bit token counts and rate limits

Token counts (``usage``, ``runs``, ``run_calls``, ``thread_messages``, ``thread_summaries``) and the
``rpm``/``tpm`` limits of users and keys can pass 2**31, the largest PostgreSQL ``integer``; they become
``bigint``. SQLite's ``INTEGER`` holds 64 bits already and the models keep it there
(``BigInteger().with_variant(Integer, "sqlite")``), so SQLite has nothing to change: rebuilding those
tables in batch mode would gain nothing, and with foreign keys on, dropping the old ``users`` table
would cascade to every session, key and thread.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-10 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TOKENS = ('prompt_tokens', 'completion_tokens')
_COLUMNS: dict[str, tuple[tuple[str, bool], ...]] = {
    'users': (('rpm', True), ('tpm', True)),
    'api_keys': (('rpm', True), ('tpm', True)),
    **{table: tuple((c, False) for c in _TOKENS)
       for table in ('usage', 'runs', 'run_calls', 'thread_messages', 'thread_summaries')},
}
"""Table -> (column, nullable)."""


def _retype(old: sa.types.TypeEngine[int], new: sa.types.TypeEngine[int]) -> None:
    if op.get_bind().dialect.name == 'sqlite':
        return
    for table, columns in _COLUMNS.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column, nullable in columns:
                batch_op.alter_column(column, existing_type=old, type_=new, existing_nullable=nullable)


def upgrade() -> None:
    _retype(sa.Integer(), sa.BigInteger())


def downgrade() -> None:
    # Fails on PostgreSQL while a stored value is above 2**31 - 1: nothing is cut short.
    _retype(sa.BigInteger(), sa.Integer())
