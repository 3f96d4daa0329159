"""Evaluations

``eval_datasets``: the datasets of questions users upload (their valid items as JSON, the lines left out and
why). ``eval_answers``: the evaluations' answer cache, one row per user, candidate, question (``item_key``, a hash
of its messages) and answer parameters (``params``, a hash): a new evaluation re-judging the same answers asks no
candidate again. An evaluation itself is a run (``runs.kind = 'evaluation'``).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-14 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0016'
down_revision: str | None = '0015'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_INT = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'eval_datasets',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('user_id', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('items', sa.JSON(), nullable=False),
        sa.Column('item_count', sa.Integer(), nullable=False),
        sa.Column('tags', sa.JSON(), nullable=False),
        sa.Column('errors', sa.JSON(), nullable=False),
        sa.Column('warnings', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_eval_datasets_user', 'eval_datasets', ['user_id', 'created_at'], unique=False)
    op.create_table(
        'eval_answers',
        sa.Column('id', _BIG_INT, autoincrement=True, nullable=False),
        sa.Column('user_id', sa.String(length=32), nullable=False),
        sa.Column('candidate', sa.String(length=256), nullable=False),
        sa.Column('item_key', sa.String(length=64), nullable=False),
        sa.Column('params', sa.String(length=64), nullable=False),
        sa.Column('text', sa.Text(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('cost_usd', sa.Float(), nullable=False),
        sa.Column('latency_ms', sa.Float(), nullable=False),
        sa.Column('citations', sa.JSON(), nullable=True),
        sa.Column('prompt_tokens', _BIG_INT, nullable=False),
        sa.Column('completion_tokens', _BIG_INT, nullable=False),
        sa.Column('run_id', sa.String(length=32), nullable=True),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('user_id', 'candidate', 'item_key', 'params', name='uq_eval_answer'),
    )


def downgrade() -> None:
    op.drop_table('eval_answers')
    op.drop_index('ix_eval_datasets_user', table_name='eval_datasets')
    op.drop_table('eval_datasets')
