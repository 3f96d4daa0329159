"""A lease on a thread while a turn is under way

``threads.busy_until``: the process writing a reply holds the thread until then and renews the lease
while it runs, so a second turn sent to any process sharing the database is refused before anything
is spent (it used to be refused only by the process that held the turn).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 19:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('threads', schema=None) as batch_op:
        batch_op.add_column(sa.Column('busy_until', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('threads', schema=None) as batch_op:
        batch_op.drop_column('busy_until')
