"""Apply the Alembic migrations (``thinktank db upgrade``; the server does it at start)."""

from __future__ import annotations

import asyncio

from alembic import command
from alembic.config import Config

__all__ = ["alembic_config", "upgrade", "upgrade_async"]


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "thinktank.store:migrations")
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (idempotent)."""
    command.upgrade(alembic_config(url), revision)


async def upgrade_async(url: str, revision: str = "head") -> None:
    # Alembic's env runs its own event loop: give it a thread.
    await asyncio.to_thread(upgrade, url, revision)
