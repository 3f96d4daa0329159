"""Alert claims

``alert_claims``: the alerts sent (a budget's threshold in a period, a deployment's cooldown), one row each,
taken by an atomic insert so that several workers, and a restarted one, send each alert once.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-12 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'alert_claims',
        sa.Column('key', sa.String(length=512), nullable=False),
        sa.Column('until', sa.Float(), nullable=True),
        sa.Column('claimed_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('key'),
    )
    op.create_index(op.f('ix_alert_claims_until'), 'alert_claims', ['until'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_alert_claims_until'), table_name='alert_claims')
    op.drop_table('alert_claims')
