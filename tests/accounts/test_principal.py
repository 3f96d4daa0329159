"""The authenticator's cache against a real SQLite database: a key in use is looked up again in
the background before its entry runs out, and nothing is trusted longer than ``cache_ttl``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import update

from thinktank.accounts.admin_key import AdminKey, hash_key
from thinktank.accounts.keys import KeyService
from thinktank.accounts.principal import Authenticator, Principal
from thinktank.accounts.schemas import KeyCreate
from thinktank.store.db import Database
from thinktank.store.tables import ApiKey

from ..fakes.clock import FakeClock
from ..fakes.databases import make_sqlite


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(await asyncio.to_thread(make_sqlite, tmp_path))
    yield database
    await database.close()


async def new_key(db: Database, clock: FakeClock, auth: Authenticator) -> tuple[str, str]:
    made = await KeyService(db, clock, auth).create(auth.known_admin(), KeyCreate(name="ci", rpm=10))
    return made.key, made.id


async def revoke_elsewhere(db: Database, key_id: str) -> None:
    """What another process's revocation does: the row changes, this process is not told."""
    async with db.session() as s:
        await s.execute(update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=1.0))


async def settle(auth: Authenticator) -> None:
    await asyncio.gather(*auth._refreshes)


async def test_a_busy_key_is_renewed_in_the_background_and_never_waits(db: Database, clock: FakeClock) -> None:
    auth = Authenticator(db, AdminKey(hash_key("sk-admin")), clock, cache_ttl=5.0)
    token, key_id = await new_key(db, clock, auth)
    assert auth.known(token) is None  # never seen: the caller must look it up
    first = await auth.lookup(token)
    seen: list[Principal | None] = []
    for _ in range(30):  # a request every 0.5 s for 15 s: three times the cache's lifetime
        clock.advance(0.5)
        seen.append(auth.known(token))
        await settle(auth)
    assert all(p is not None and p.key_id == key_id for p in seen)
    assert seen[-1] is not first  # renewed, not kept past its time
    await auth.close()


async def test_a_refresh_drops_a_key_revoked_elsewhere(db: Database, clock: FakeClock) -> None:
    auth = Authenticator(db, AdminKey(hash_key("sk-admin")), clock, cache_ttl=5.0)
    token, key_id = await new_key(db, clock, auth)
    await auth.lookup(token)
    await revoke_elsewhere(db, key_id)
    clock.advance(4.5)
    assert auth.known(token) is not None  # still within cache_ttl: trusted, and looked up again
    await settle(auth)
    assert auth.known(token) is None  # well before the 5 s are over


async def test_an_entry_is_never_trusted_past_cache_ttl(db: Database, clock: FakeClock) -> None:
    auth = Authenticator(db, AdminKey(hash_key("sk-admin")), clock, cache_ttl=5.0)
    token, key_id = await new_key(db, clock, auth)
    await auth.lookup(token)
    await revoke_elsewhere(db, key_id)
    clock.advance(3.9)
    assert auth.known(token) is not None  # not yet due for a refresh: nothing started
    assert not auth._refreshes
    clock.advance(1.1)  # unused through the refresh window: it simply runs out
    assert auth.known(token) is None


async def test_a_refresh_that_began_before_a_revocation_here_caches_nothing(db: Database,
                                                                           clock: FakeClock) -> None:
    auth = Authenticator(db, AdminKey(hash_key("sk-admin")), clock, cache_ttl=5.0)
    keys = KeyService(db, clock, auth)
    token, key_id = await new_key(db, clock, auth)
    await auth.lookup(token)
    clock.advance(4.5)
    assert auth.known(token) is not None  # starts the refresh (which reads the key as valid)...
    await keys.revoke(auth.known_admin(), key_id)  # ...and the revocation lands while it runs
    await settle(auth)
    assert auth.known(token) is None
