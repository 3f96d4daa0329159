from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ..fakes.databases import clone_pg, drop_pg


@pytest.fixture
async def pg_url(pg_template: str) -> AsyncIterator[str]:
    """A migrated, empty PostgreSQL database of this test's own (the job queue's tables included)."""
    name, url = await clone_pg(pg_template)
    try:
        yield url
    finally:
        await drop_pg(name)
