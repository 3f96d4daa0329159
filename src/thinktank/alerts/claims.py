"""Which worker sends an alert: the one whose atomic claim on the alert's key succeeds.

A claim is taken if nobody holds the key, or if its holder's claim has run out (``until`` has passed). On SQL
it is one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE until <= now RETURNING`` (two workers at once: the
database orders them and only the first gets a row back); on Redis it is a Lua script (``SET`` unless a claim
still running holds the key), atomic as every script is. Claims outlive the process, so a restarted worker does
not send an alert again.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import and_, delete

from ..clock import Clock
from ..store.db import Database
from ..store.tables import AlertClaim

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["Claims", "RedisClaims", "SqlClaims"]

log = logging.getLogger(__name__)


class Claims(Protocol):
    async def claim(self, key: str, until: float | None) -> bool:
        """Take ``key`` until the wall-clock time ``until`` (None: for good); False if someone holds it."""
        ...


class SqlClaims:
    """The ``alert_claims`` table, on SQLite or PostgreSQL."""

    #: Claims that ran out are deleted at most this often (seconds), after a successful claim.
    PRUNE_EVERY = 3600.0

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._pruned_at = -math.inf

    def _insert(self, key: str, until: float | None, now: float) -> Any:
        values = {"key": key, "until": until, "claimed_at": now}
        held = and_(AlertClaim.until.is_not(None), AlertClaim.until <= now)
        if self._db.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            pg = pg_insert(AlertClaim).values(**values)
            return pg.on_conflict_do_update(
                index_elements=[AlertClaim.key], set_={"until": pg.excluded.until, "claimed_at": now}, where=held,
            ).returning(AlertClaim.key)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        lite = sqlite_insert(AlertClaim).values(**values)
        return lite.on_conflict_do_update(
            index_elements=[AlertClaim.key], set_={"until": lite.excluded.until, "claimed_at": now}, where=held,
        ).returning(AlertClaim.key)

    async def claim(self, key: str, until: float | None) -> bool:
        now = self._clock.time()
        async with self._db.session() as session:
            conn = await session.connection()
            taken = (await conn.execute(self._insert(key, until, now))).first() is not None
        if taken and now - self._pruned_at >= self.PRUNE_EVERY:
            self._pruned_at = now
            try:
                async with self._db.session() as session:
                    await session.execute(delete(AlertClaim).where(AlertClaim.until < now))
            except Exception:  # tidying only: the claim stands
                log.exception("forgetting old alert claims failed")
        return taken


# KEYS[1] the claim; ARGV: now, until ("" for never), expiry in ms (0: none). The holder's end is stored as the
# value and compared with the caller's clock (the injected one, as the SQL claims do); Redis's own expiry only
# tidies up, a little after that end.
_CLAIM_LUA = """
local held = redis.call('GET', KEYS[1])
if held and (held == '' or tonumber(held) > tonumber(ARGV[1])) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"""


class RedisClaims:
    """One key per claim, taken atomically (a Lua script: set unless held by a claim still running)."""

    #: Redis forgets a claim this long (ms) after it ran out.
    TIDY_MS = 60_000

    def __init__(self, client: Redis, clock: Clock, prefix: str = "tt:alert") -> None:
        self._clock = clock
        self._prefix = prefix
        self._claim = client.register_script(_CLAIM_LUA)

    async def claim(self, key: str, until: float | None) -> bool:
        now = self._clock.time()
        expiry = 0 if until is None else max(math.ceil((until - now) * 1000), 0) + self.TIDY_MS
        args: list[str | int] = [repr(now), "" if until is None else repr(until), expiry]
        return int(await self._claim(keys=[f"{self._prefix}:{key}"], args=args)) == 1
