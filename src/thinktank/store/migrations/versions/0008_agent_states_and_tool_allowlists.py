"""Agent checkpoints and tool allowlists

``agent_states``: an agent run's checkpoint (its conversation with tool calls and results, its steps, the
calls waiting for approval and until when), written with the run's events after every completed step, so
that a run resumes after a restart without repeating or paying again for what it finished.
``ix_runs_status_heartbeat``: the runs every worker looks for every few seconds (interrupted ones).
``users.allowed_tools`` and ``api_keys.allowed_tools``: the agent tools and MCP servers a user's or a key's
agents may use (NULL: all).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'agent_states',
        sa.Column('run_id', sa.String(length=32), nullable=False),
        sa.Column('state', sa.JSON(), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('deadline', sa.Float(), nullable=True),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('run_id'),
    )
    op.create_index(op.f('ix_agent_states_deadline'), 'agent_states', ['deadline'], unique=False)
    # What every worker looks for every few seconds: running runs nobody has saved for a while.
    op.create_index('ix_runs_status_heartbeat', 'runs', ['status', 'heartbeat_at'], unique=False)
    # Plain ALTER TABLE ... ADD COLUMN on both databases: a batch rebuild of ``users`` on SQLite would drop
    # the old table, and with foreign keys on, every session, key and thread with it.
    op.add_column('users', sa.Column('allowed_tools', sa.JSON(), nullable=True))
    op.add_column('api_keys', sa.Column('allowed_tools', sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column('api_keys', 'allowed_tools')  # ALTER TABLE ... DROP COLUMN (SQLite 3.35 and later)
    op.drop_column('users', 'allowed_tools')
    op.drop_index('ix_runs_status_heartbeat', table_name='runs')
    op.drop_index(op.f('ix_agent_states_deadline'), table_name='agent_states')
    op.drop_table('agent_states')
