"""Budgets in Redis: one hash per budget and period (fields ``limit``, ``spent``, ``leased`` and one ``h:<holder>``
per process holding a lease of it), changed only by Lua scripts, so ``spent + leased <= limit`` holds
whatever the number of processes.

Holders: a sorted set ``<prefix>:holders`` scores each holder by the time (Redis's own clock, so the
processes' clocks need not agree) its leases run out unless renewed; ``<prefix>:holder:<id>`` lists the budget
hashes it holds leases in.
Reclaiming a holder that ran out takes its fields off those hashes and their amounts from ``leased`` to ``spent``
(it may have spent them), and onto ``r:<journal>`` of its journal, in one script. Journal marks
(:mod:`.budget_marks` says what they are): ``m:<journal>`` (position) and ``r:<journal>`` (reclaimed) in the
budget's hash; ``<prefix>:journal:<journal>`` lists the hashes with a mark of that journal. The scripts touch keys
they find in those sets: a single Redis server (not Cluster).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..clock import Clock
from .budget_backends import (
    EPSILON,
    EXPIRY_GRACE,
    BudgetKey,
    BudgetSpec,
    Holder,
    Mark,
    _check_amount,
    _limit,
    period_reset_in,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisBudgetStore"]

_NOW_LUA = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# KEYS[1] the budget hash, KEYS[2] the holders' sorted set, KEYS[3] the holder's set of budgets;
# ARGV: limit, amount, eps, ttl seconds (0: none), holder field ('' for none), holder id, its lease ttl (s).
_ACQUIRE_LUA = _NOW_LUA + """
local key = KEYS[1]
redis.call('HSET', key, 'limit', ARGV[1])
local spent = tonumber(redis.call('HGET', key, 'spent') or '0')
local leased = tonumber(redis.call('HGET', key, 'leased') or '0')
if spent == nil then spent = 0 end
if leased == nil then leased = 0 end
local ttl = tonumber(ARGV[4])
if ttl > 0 then redis.call('EXPIRE', key, ttl) end
if spent + leased + tonumber(ARGV[2]) <= tonumber(ARGV[1]) + tonumber(ARGV[3]) then
  redis.call('HINCRBYFLOAT', key, 'leased', ARGV[2])
  if ARGV[5] ~= '' then
    redis.call('HINCRBYFLOAT', key, ARGV[5], ARGV[2])
    redis.call('SADD', KEYS[3], key)
    redis.call('ZADD', KEYS[2], now() + tonumber(ARGV[7]), ARGV[6])
  end
  return 1
end
return 0
"""

# KEYS[1] the budget hash, KEYS[2] the holder's set of budgets (unused without a holder), KEYS[3] the journal's set
# of budgets (unused without a journal); ARGV: limit, spent_delta, lease_delta, minus lease_delta, eps, ttl seconds
# (0: none), holder field ('': none), journal ('': none), its position.
# With a holder, never more lease goes back than it holds (a lease reclaimed meanwhile is gone already).
# Returns the spent after the step (HINCRBYFLOAT's string: a Lua number would come back truncated to an integer).
_COMMIT_LUA = """
local key = KEYS[1]
if redis.call('HEXISTS', key, 'limit') == 0 then redis.call('HSET', key, 'limit', ARGV[1]) end
local spent = redis.call('HINCRBYFLOAT', key, 'spent', ARGV[2])
if ARGV[8] ~= '' then
  local mark = 'm:' .. ARGV[8]
  if tonumber(ARGV[9]) > (tonumber(redis.call('HGET', key, mark) or '0') or 0) then
    redis.call('HSET', key, mark, ARGV[9])
  end
  redis.call('SADD', KEYS[3], key)
end
local back, minus = tonumber(ARGV[3]), ARGV[4]
if ARGV[7] ~= '' and back > 0 then
  local raw = redis.call('HGET', key, ARGV[7]) or '0'
  local held = tonumber(raw)
  if held - back > tonumber(ARGV[5]) then
    redis.call('HINCRBYFLOAT', key, ARGV[7], minus)
  else
    redis.call('HDEL', key, ARGV[7])
    redis.call('SREM', KEYS[2], key)
    back, minus = held, '-' .. raw
  end
end
local leased = tonumber(redis.call('HGET', key, 'leased') or '0')
if leased == nil then leased = 0 end
if back > 0 then
  if leased - back > tonumber(ARGV[5]) then
    redis.call('HINCRBYFLOAT', key, 'leased', minus)
  else
    redis.call('HSET', key, 'leased', '0')
  end
end
local ttl = tonumber(ARGV[6])
if ttl > 0 then redis.call('EXPIRE', key, ttl) end
return spent
"""

# KEYS[1] the holders' sorted set; ARGV: the prefix of the holders' sets of budgets, eps, now ('': Redis's clock),
# the holder to give up ('': every holder whose leases ran out before now), the prefix of the journals' sets of
# budgets. A holder given up hands its leases back; one that ran out has them counted as spent (and as reclaimed on
# its journal's mark: a holder <journal>/<n>). Returns the USD.
_RECLAIM_LUA = _NOW_LUA + """
local function give_back(holder, spend)
  local field, budgets, total = 'h:' .. holder, ARGV[1] .. holder, 0
  local journal = string.match(holder, '^(.+)/%d+$')
  for _, budget in ipairs(redis.call('SMEMBERS', budgets)) do
    local raw = redis.call('HGET', budget, field)
    local held = tonumber(raw or '0') or 0
    if raw then redis.call('HDEL', budget, field) end
    if held > 0 then
      local leased = tonumber(redis.call('HGET', budget, 'leased') or '0') or 0
      if leased - held > tonumber(ARGV[2]) then
        redis.call('HINCRBYFLOAT', budget, 'leased', '-' .. raw)
      else
        redis.call('HSET', budget, 'leased', '0')
      end
      if spend then
        redis.call('HINCRBYFLOAT', budget, 'spent', raw)
        if journal then
          redis.call('HINCRBYFLOAT', budget, 'r:' .. journal, raw)
          redis.call('SADD', ARGV[5] .. journal, budget)
        end
      end
      total = total + held
    end
  end
  redis.call('DEL', budgets)
  redis.call('ZREM', KEYS[1], holder)
  return total
end
if ARGV[4] ~= '' then return tostring(give_back(ARGV[4], false)) end
local t = now()
if ARGV[3] ~= '' then t = tonumber(ARGV[3]) end
local total = 0
for _, holder in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. t, 'LIMIT', 0, 100)) do
  total = total + give_back(holder, true)
end
return tostring(total)
"""

# KEYS[1] the budget hash, KEYS[2] the journal's set of budgets; ARGV: journal, unflushed, expected position, last
# position, eps, the prefix of the holders' sets of budgets. See BudgetStore.settle_journal. Returns the change of
# spent ('none': no such budget, 'stale': the mark is not where expected).
_SETTLE_LUA = """
local key, journal = KEYS[1], ARGV[1]
if redis.call('EXISTS', key) == 0 then return 'none' end
local mark, reclaimed_field = 'm:' .. journal, 'r:' .. journal
if (tonumber(redis.call('HGET', key, mark) or '0') or 0) ~= tonumber(ARGV[3]) then return 'stale' end
local reclaimed = tonumber(redis.call('HGET', key, reclaimed_field) or '0') or 0
local prefix, back = 'h:' .. journal .. '/', 0
for _, field in ipairs(redis.call('HKEYS', key)) do
  if string.sub(field, 1, #prefix) == prefix then
    back = back + (tonumber(redis.call('HGET', key, field)) or 0)
    redis.call('HDEL', key, field)
    redis.call('SREM', ARGV[6] .. string.sub(field, 3), key)
  end
end
local delta = string.format('%.17g', tonumber(ARGV[2]) - reclaimed)
if tonumber(redis.call('HINCRBYFLOAT', key, 'spent', delta)) < 0 then redis.call('HSET', key, 'spent', '0') end
if back > 0 then
  local leased = tonumber(redis.call('HGET', key, 'leased') or '0') or 0
  if leased - back > tonumber(ARGV[5]) then
    redis.call('HINCRBYFLOAT', key, 'leased', string.format('%.17g', -back))
  else
    redis.call('HSET', key, 'leased', '0')
  end
end
redis.call('HSET', key, mark, ARGV[4])
redis.call('HDEL', key, reclaimed_field)
redis.call('SADD', KEYS[2], key)
return delta
"""

# KEYS[1] the holders' sorted set; ARGV: the holder, its lease ttl (s).
_RENEW_LUA = _NOW_LUA + """
redis.call('ZADD', KEYS[1], now() + tonumber(ARGV[2]), ARGV[1])
return 1
"""


class RedisBudgetStore:
    """Budgets and their holders' leases in Redis (see the module)."""

    def __init__(self, redis_client: Redis, clock: Clock, prefix: str = "tt:budget") -> None:
        self._redis = redis_client
        self._clock = clock
        self._prefix = prefix
        self._holders = f"{prefix}:holders"
        self._acquire = redis_client.register_script(_ACQUIRE_LUA)
        self._commit = redis_client.register_script(_COMMIT_LUA)
        self._reclaim = redis_client.register_script(_RECLAIM_LUA)
        self._renew = redis_client.register_script(_RENEW_LUA)
        self._settle = redis_client.register_script(_SETTLE_LUA)

    def key(self, spec: BudgetSpec, period_key: str) -> str:
        return f"{self._prefix}:{spec.scope}:{spec.scope_id}:{period_key}"

    def _holder_key(self, holder_id: str) -> str:
        return f"{self._prefix}:holder:{holder_id}"

    def _journal_key(self, journal: str) -> str:
        return f"{self._prefix}:journal:{journal}"

    def _budget_key(self, key: BudgetKey) -> str:
        return f"{self._prefix}:{key[0]}:{key[1]}:{key[2]}"

    def _key_of(self, hash_key: str) -> BudgetKey | None:
        """The budget of a hash's key (``<prefix>:<scope>:<scope id>:<period key>``)."""
        rest = hash_key.removeprefix(f"{self._prefix}:")
        scope, _, tail = rest.partition(":")
        scope_id, _, pkey = tail.rpartition(":")
        return (scope, scope_id, pkey) if scope and scope_id and pkey else None

    def _ttl(self, spec: BudgetSpec) -> int:
        if spec.period == "total":
            return 0
        # Relative to the injected clock: the Redis server's own clock plays no part.
        return math.ceil(period_reset_in(spec.period, self._clock.time()) + EXPIRY_GRACE)

    async def acquire(self, spec: BudgetSpec, period_key: str, amount: float, holder: Holder | None = None
                      ) -> bool:
        _check_amount("amount", amount)
        field, hid, ttl = ("", "", "0") if holder is None else (f"h:{holder.id}", holder.id, repr(holder.ttl))
        keys = [self.key(spec, period_key), self._holders, self._holder_key(hid)]
        args: list[str | int] = [repr(_limit(spec)), repr(float(amount)), repr(EPSILON), self._ttl(spec), field, hid,
                                 ttl]
        return int(await self._acquire(keys=keys, args=args)) == 1

    async def commit(self, spec: BudgetSpec, period_key: str, spent_delta: float, lease_delta: float,
                     holder: Holder | None = None, mark: Mark | None = None) -> float | None:
        _check_amount("spent_delta", spent_delta)
        _check_amount("lease_delta", lease_delta)
        if spent_delta == 0 and lease_delta == 0:
            return None
        hid = "" if holder is None else holder.id
        journal, seq = mark if mark is not None else ("", 0)
        args: list[str | int] = [repr(_limit(spec)), repr(float(spent_delta)), repr(float(lease_delta)),
                                 repr(-float(lease_delta)), repr(EPSILON), self._ttl(spec), f"h:{hid}" if hid else "",
                                 journal, seq]
        keys = [self.key(spec, period_key), self._holder_key(hid), self._journal_key(journal)]
        return float(await self._commit(keys=keys, args=args))

    async def read(self, spec: BudgetSpec, period_key: str) -> tuple[float, float, float]:
        raw = await self._redis.hmget(self.key(spec, period_key), ["limit", "spent", "leased"])
        limit, spent, leased = (None if v is None else float(v) for v in raw)
        return (_limit(spec) if limit is None else limit, spent or 0.0, leased or 0.0)

    async def renew(self, holder: Holder) -> None:
        await self._renew(keys=[self._holders], args=[holder.id, repr(holder.ttl)])

    async def reclaim_expired(self, now: float | None = None) -> float:
        return await self._give_back("" if now is None else repr(now), "")

    async def drop(self, holder: Holder) -> float:
        return await self._give_back("", holder.id)

    async def _give_back(self, now: str, holder_id: str) -> float:
        args = [f"{self._prefix}:holder:", repr(EPSILON), now, holder_id, f"{self._prefix}:journal:"]
        return float(await self._reclaim(keys=[self._holders], args=args))

    async def journal_budgets(self, journal: str) -> dict[BudgetKey, int]:
        hashes = {_text(h) for h in await self._redis.smembers(self._journal_key(journal))}
        async for member, _ in self._redis.zscan_iter(self._holders, match=f"{journal}/*"):
            hashes.update(_text(h) for h in await self._redis.smembers(self._holder_key(_text(member))))
        found: dict[BudgetKey, int] = {}
        for hash_key in sorted(hashes):
            key = self._key_of(hash_key)
            if key is not None:
                raw = await self._redis.hget(hash_key, f"m:{journal}")
                found[key] = int(raw) if raw is not None else 0
        return found

    async def settle_journal(self, journal: str, key: BudgetKey, unflushed: float, expected: int, last: int
                             ) -> float | None:
        from .budget_marks import StaleMarkError

        args: list[str | int] = [journal, repr(float(unflushed)), expected, last, repr(EPSILON),
                                 f"{self._prefix}:holder:"]
        got = _text(await self._settle(keys=[self._budget_key(key), self._journal_key(journal)], args=args))
        if got == "stale":
            raise StaleMarkError(f"the mark of journal {journal} on {key} moved")
        return None if got == "none" else float(got)

    async def forget_journal(self, journal: str) -> None:
        index = self._journal_key(journal)
        for hash_key in await self._redis.smembers(index):
            await self._redis.hdel(_text(hash_key), f"m:{journal}", f"r:{journal}")
        await self._redis.delete(index)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
