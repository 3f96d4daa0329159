"""Job queue

On PostgreSQL, procrastinate's schema (``procrastinate_*`` tables, types, functions and triggers: the job queue of
``thinktank.jobs``), as the installed procrastinate ships it (``SchemaManager.get_schema()``), with the version it
came from recorded in the comment of ``procrastinate_jobs`` (``procrastinate <version>``). A later procrastinate
that changes its schema ships migration scripts (``procrastinate/sql/migrations/<version>_<nn>_<name>.sql``): a
later thinktank migration applies those newer than the recorded version, in name order, and records the new one
(on a database this revision made with that later procrastinate, there is then nothing left to apply). SQLite
deployments use the in-process queue: nothing is made there.

Everywhere: ``kb_ingestions`` and ``kb_ingestion_items`` (ingestion as a job: the staged sources and each one's
result) and ``thread_messages.memory_extracted_at`` (a user message's memories are stored once).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-15 09:00:00
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DROP_FUNCTIONS = """
DO $$
DECLARE f record;
BEGIN
    FOR f IN SELECT p.oid::regprocedure AS signature FROM pg_proc p
             WHERE p.proname LIKE 'procrastinate\\_%' AND p.pronamespace = current_schema()::regnamespace LOOP
        EXECUTE 'DROP FUNCTION IF EXISTS ' || f.signature || ' CASCADE';
    END LOOP;
END $$;
"""


def _run_script(sql: str) -> None:
    """A script of many statements (with ``$$`` bodies), run as one simple query on the migration's own connection
    and transaction (a prepared statement holds one statement only)."""
    driver = op.get_bind().connection.dbapi_connection
    assert driver is not None
    if hasattr(driver, "run_async"):  # asyncpg, the driver thinktank migrates with
        driver.run_async(lambda connection: connection.execute(sql))
    else:  # a synchronous DB-API driver (psycopg) runs a script in one execute
        cursor = driver.cursor()
        try:
            cursor.execute(sql)
        finally:
            cursor.close()


def _procrastinate_schema() -> None:
    from procrastinate.schema import SchemaManager

    present = op.get_bind().execute(sa.text("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")).scalar_one()
    if present:  # made by hand (``procrastinate schema --apply``) before thinktank managed it: kept
        return
    _run_script(SchemaManager.get_schema())
    version = importlib.metadata.version("procrastinate")
    op.execute(sa.text(f"COMMENT ON TABLE procrastinate_jobs IS 'procrastinate {version}'"))


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _procrastinate_schema()
    op.create_table(
        'kb_ingestions',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('kb_id', sa.String(length=32), nullable=False),
        sa.Column('user_id', sa.String(length=32), nullable=False),
        sa.Column('key_id', sa.String(length=32), nullable=True),
        sa.Column('status', sa.String(length=10), nullable=False),
        sa.Column('pending', sa.Boolean(), nullable=False),
        sa.Column('total', sa.Integer(), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('job_id', sa.String(length=32), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.Column('finished_at', sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(['kb_id'], ['knowledge_bases.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_kb_ingestions_kb_id', 'kb_ingestions', ['kb_id'], unique=False)
    op.create_index('ix_kb_ingestions_status', 'kb_ingestions', ['status', 'created_at'], unique=False)
    op.create_table(
        'kb_ingestion_items',
        sa.Column('ingestion_id', sa.String(length=32), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('source', sa.String(length=1024), nullable=False),
        sa.Column('data', sa.LargeBinary(), nullable=False),
        sa.Column('content_type', sa.String(length=255), nullable=True),
        sa.Column('title', sa.String(length=500), nullable=True),
        sa.Column('metadata', sa.JSON(), nullable=True),
        sa.Column('status', sa.String(length=10), nullable=True),
        sa.Column('result', sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(['ingestion_id'], ['kb_ingestions.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('ingestion_id', 'position'),
    )
    op.add_column('thread_messages', sa.Column('memory_extracted_at', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('thread_messages') as batch:
        batch.drop_column('memory_extracted_at')
    op.drop_table('kb_ingestion_items')
    op.drop_index('ix_kb_ingestions_status', table_name='kb_ingestions')
    op.drop_index('ix_kb_ingestions_kb_id', table_name='kb_ingestions')
    op.drop_table('kb_ingestions')
    if op.get_bind().dialect.name == "postgresql":
        op.execute(sa.text("DROP TABLE IF EXISTS procrastinate_events, procrastinate_periodic_defers, "
                           "procrastinate_jobs, procrastinate_workers CASCADE"))
        op.execute(sa.text("DROP TYPE IF EXISTS procrastinate_job_status, procrastinate_job_event_type, "
                           "procrastinate_job_to_defer_v1 CASCADE"))
        _run_script(_DROP_FUNCTIONS)
