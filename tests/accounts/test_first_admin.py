"""The first admin from the environment, made by several workers starting at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import func, select

from thinktank.accounts.admin_key import AdminKey
from thinktank.accounts.principal import Authenticator
from thinktank.accounts.secrets import PasswordHashing
from thinktank.accounts.users import UserService
from thinktank.clock import SystemClock
from thinktank.store.db import Database
from thinktank.store.migrate import upgrade_async
from thinktank.store.tables import User


async def test_workers_starting_together_make_the_first_admin_once(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    await upgrade_async(url)
    dbs = [Database(url) for _ in range(4)]  # one per worker process, as `thinktank serve --workers 4` has
    clock = SystemClock()
    try:
        key = AdminKey.of("tt-test-admin-key-0123456789")
        services = [UserService(db, clock, PasswordHashing(), Authenticator(db, key, clock)) for db in dbs]
        made = await asyncio.gather(*(s.ensure_admin("Admin@Example.com", "a long password") for s in services))
        assert sorted(made) == [False, False, False, True]  # one made it; the others found it, none failed
        async with dbs[0].session() as s:
            assert (await s.execute(select(func.count()).select_from(User).where(
                User.email == "admin@example.com"))).scalar() == 1
    finally:
        for db in dbs:
            await db.close()
