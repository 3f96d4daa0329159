"""Response cache

``response_cache``: cached chat answers (the response cache's database backend), keyed by the hash of the
canonical request and its tenant; rows past ``expires_at`` are never served and are deleted in the
background. ``api_keys.cache_ttl``: seconds a key's answers are cached (0: never, NULL: as configured).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'response_cache',
        sa.Column('key', sa.String(length=64), nullable=False),
        sa.Column('tenant', sa.String(length=64), nullable=False),
        sa.Column('model', sa.String(length=256), nullable=False),
        sa.Column('body', sa.LargeBinary(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('expires_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('key'),
    )
    op.create_index('ix_response_cache_expires', 'response_cache', ['expires_at'], unique=False)
    op.create_index('ix_response_cache_tenant', 'response_cache', ['tenant'], unique=False)
    # Plain ALTER TABLE ... ADD COLUMN (a batch rebuild of api_keys on SQLite is not needed for a new column).
    op.add_column('api_keys', sa.Column('cache_ttl', sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column('api_keys', 'cache_ttl')
    op.drop_index('ix_response_cache_tenant', table_name='response_cache')
    op.drop_index('ix_response_cache_expires', table_name='response_cache')
    op.drop_table('response_cache')
