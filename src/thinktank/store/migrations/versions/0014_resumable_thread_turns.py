"""Thread turns that another process can finish

``thread_turns`` keeps what a turn needs to be answered again by another process when the one running it dies:
who asked (``user_id``, ``key_id``), the user's message (``content``) and the turn's options (``request``: model,
stream, max_tokens, temperature, replace_from); who runs it now (``owner``, a process's token), when that process
last showed it was alive (``heartbeat_at``), how often it was taken up (``attempts``) and the run answering it when
its model is a run (``run_id``).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-12 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('thread_turns') as batch:
        batch.add_column(sa.Column('user_id', sa.String(length=32), nullable=True))
        batch.add_column(sa.Column('key_id', sa.String(length=32), nullable=True))
        batch.add_column(sa.Column('content', sa.Text(), nullable=True))
        batch.add_column(sa.Column('request', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('owner', sa.String(length=32), nullable=True))
        batch.add_column(sa.Column('heartbeat_at', sa.Float(), nullable=True))
        batch.add_column(sa.Column('attempts', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('run_id', sa.String(length=32), nullable=True))
    op.create_index('ix_thread_turns_open', 'thread_turns', ['ended_at', 'heartbeat_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_thread_turns_open', table_name='thread_turns')
    with op.batch_alter_table('thread_turns') as batch:
        for column in ('run_id', 'attempts', 'heartbeat_at', 'owner', 'request', 'content', 'key_id', 'user_id'):
            batch.drop_column(column)
