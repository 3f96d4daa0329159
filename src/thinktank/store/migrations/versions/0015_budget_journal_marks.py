"""Budget journal marks

``budget_journal_marks``: for each process journal (``thinktank.accounts.journal``) and budget, how far that
journal's spend on the budget is in ``budgets.spent_usd`` (``seq``, a position in the journal), and what a
reclaim of that process's expired leases counted as spent for it (``reclaimed_usd``) until the journal's
replay sets the exact figure.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-11 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'budget_journal_marks',
        sa.Column('journal', sa.String(length=64), nullable=False),
        sa.Column('scope', sa.String(length=8), nullable=False),
        sa.Column('scope_id', sa.String(length=64), nullable=False),
        sa.Column('period', sa.String(length=16), nullable=False),
        sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('reclaimed_usd', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('journal', 'scope', 'scope_id', 'period'),
    )


def downgrade() -> None:
    op.drop_table('budget_journal_marks')
