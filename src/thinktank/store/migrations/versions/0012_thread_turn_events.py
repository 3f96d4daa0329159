"""Thread turns' events, stored

``thread_turns``: a thread's last turn (its start, and its end once it ended); ``thread_turn_events``: its
events in order, written as the turn runs, so a client can follow or resume a turn (``Last-Event-ID``)
through any process that shares the database, while it runs and for a while after.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-09 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'thread_turns',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('thread_id', sa.String(length=32), nullable=False),
        sa.Column('started_at', sa.Float(), nullable=False),
        sa.Column('ended_at', sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(['thread_id'], ['threads.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_thread_turns_thread', 'thread_turns', ['thread_id', 'started_at'], unique=False)
    op.create_table(
        'thread_turn_events',
        sa.Column('turn_id', sa.String(length=32), nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('type', sa.String(length=32), nullable=False),
        sa.Column('data', sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(['turn_id'], ['thread_turns.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('turn_id', 'seq'),
    )


def downgrade() -> None:
    op.drop_table('thread_turn_events')
    op.drop_index('ix_thread_turns_thread', table_name='thread_turns')
    op.drop_table('thread_turns')
