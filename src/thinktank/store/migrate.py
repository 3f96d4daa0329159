"""Apply the Alembic migrations (``thinktank db upgrade``; the server does it at start)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.config import Config

    from .db import Database

__all__ = ["HEAD", "alembic_config", "at_head", "upgrade", "upgrade_async"]

#: The newest migration. A test checks it against Alembic's own view, so it cannot go stale.
HEAD = "0016"


def alembic_config(url: str) -> Config:
    import sys

    from alembic.config import Config

    # Alembic's default stream is sys.stdout as it was when alembic was first imported, which may be
    # a stream that has since been closed (a CLI runner's, a test capture's); take today's.
    cfg = Config(stdout=sys.stdout)
    cfg.set_main_option("script_location", "thinktank.store:migrations")
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (idempotent)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


async def at_head(db: Database) -> bool:
    """True when the database is already migrated to HEAD (then Alembic need not even be loaded)."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    try:
        async with db.engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one_or_none()
    except DBAPIError:
        return False
    return version == HEAD


async def upgrade_async(url: str, revision: str = "head") -> None:
    # Alembic's env runs its own event loop: give it a thread.
    await asyncio.to_thread(upgrade, url, revision)
