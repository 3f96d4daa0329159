"""Budget lease holders

``budget_leases``: what each process (holder) has leased of each budget and period, with the time its lease
runs out unless the holder renews it; a lease that ran out (its process died) is handed back to the budget by
any other process. ``budgets.leased_usd`` stays the sum, so the hot ``spent + leased <= limit`` check reads
one row.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-10 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'budget_leases',
        sa.Column('scope', sa.String(length=8), nullable=False),
        sa.Column('scope_id', sa.String(length=64), nullable=False),
        sa.Column('period', sa.String(length=16), nullable=False),
        sa.Column('holder', sa.String(length=64), nullable=False),
        sa.Column('leased_usd', sa.Float(), nullable=False),
        sa.Column('expires_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('scope', 'scope_id', 'period', 'holder'),
    )
    op.create_index('ix_budget_leases_holder', 'budget_leases', ['holder'], unique=False)
    op.create_index('ix_budget_leases_expires', 'budget_leases', ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_budget_leases_expires', table_name='budget_leases')
    op.drop_index('ix_budget_leases_holder', table_name='budget_leases')
    op.drop_table('budget_leases')
