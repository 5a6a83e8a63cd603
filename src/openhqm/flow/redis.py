"""Flow limits in the Redis of the result store (`results.redis.url`, keys under `<prefix>:flow:`).

One Lua script per acquire, release, refresh and snapshot: Redis runs a script alone, so a decision
over all of a request's buckets is atomic across every process. Times are the server's (`TIME`), so
workers on hosts with skewed clocks still share one bucket. Keys expire once idle. Like the store, no
Cluster: the snapshot's script reads the buckets its index names, keys it was not given.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from openhqm.errors import BackendUnavailable, ConfigError
from openhqm.flow.ledger import TOP_KEYS, WAITING_GRACE_S, LimitState, Verdict, limits_of, top_keys
from openhqm.flow.limits import Bucket
from openhqm.redact import mask_url
from openhqm.redis_pool import pooled_client

# Keys under <prefix>:flow: per bucket `b:<id>` (its tat), `h:<id>` (holders -> lease expiry),
# `wb:<id>` (requests waiting on it -> expiry); per limit `w:<limit>` (its waiting requests), `f:<limit>`
# (its holders, over all its buckets) and `k:<limit>` (its buckets -> the time each is live until:
# the index a snapshot reads instead of scanning the keyspace).
#
# ACQUIRE KEYS: per bucket b, h, wb; then per limit w, f, k. ARGV: n, m, holder, ticket, concurrency
# delay, ttl, grace, then per bucket rate, burst, max, limit, its limit's index (1..m), id; then the
# m limit names. Steps and order as ledger.decide.
ACQUIRE = """
local n, m = tonumber(ARGV[1]), tonumber(ARGV[2])
local holder, ticket = ARGV[3], ARGV[4] == '1'
local conc_delay, ttl, grace = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function spec(i)
  local b = 7 + (i - 1) * 6
  return tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), ARGV[b + 4], tonumber(ARGV[b + 5]),
    ARGV[b + 6]
end
local function bkey(i, kind) return KEYS[3 * (i - 1) + kind] end
local function lkey(j, kind) return KEYS[3 * n + 3 * (j - 1) + kind] end
local function extend(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
local function live_until(i, at)
  local _, _, _, _, j, id = spec(i)
  local index = lkey(j, 3)
  local seen = tonumber(redis.call('ZSCORE', index, id))
  if not seen or seen < at then redis.call('ZADD', index, at, id) end
  extend(index, math.ceil((at - now) * 1000) + 60000)
end
local admitted, delay, ticket_at, blocked = 1, 0, '', ''
for i = 1, n do
  local _, _, maxc, limit = spec(i)
  if maxc then
    local hk = bkey(i, 2)
    redis.call('ZREMRANGEBYSCORE', hk, '-inf', now)
    if not redis.call('ZSCORE', hk, holder) and redis.call('ZCARD', hk) >= maxc then
      admitted, delay, blocked = 0, conc_delay, limit
      break
    end
  end
end
if admitted == 1 and not ticket then
  local start, tats = now, {}
  for i = 1, n do
    local rate, burst, _, limit = spec(i)
    if rate then
      tats[i] = tonumber(redis.call('GET', bkey(i, 1))) or now
      local conforms = math.max(tats[i], now) - (burst - 1) / rate
      if conforms > start then start, blocked = conforms, limit end
    end
  end
  for i = 1, n do
    local rate = spec(i)
    if rate then
      local tat = math.max(tats[i], start) + 1 / rate
      redis.call('SET', bkey(i, 1), string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 60000)
      live_until(i, tat)
    end
  end
  if blocked ~= '' then
    admitted, delay, ticket_at = 0, start - now, string.format('%.6f', start)
  end
end
if admitted == 1 then
  for i = 1, n do
    local _, _, maxc, _, j = spec(i)
    if maxc then
      for _, key in ipairs({bkey(i, 2), lkey(j, 2)}) do
        redis.call('ZADD', key, now + ttl, holder)
        extend(key, math.ceil(ttl * 1000) + 60000)
      end
      live_until(i, now + ttl)
    end
    redis.call('ZREM', bkey(i, 3), holder)
  end
  for j = 1, m do redis.call('ZREM', lkey(j, 1), holder) end
else
  for i = 1, n do
    local _, _, _, limit, j = spec(i)
    if limit == blocked then
      for _, key in ipairs({lkey(j, 1), bkey(i, 3)}) do
        redis.call('ZADD', key, now + delay + grace, holder)
        extend(key, math.ceil((delay + grace) * 1000) + 60000)
      end
      live_until(i, now + delay + grace)
    end
  end
end
local out = {admitted, string.format('%.6f', delay), ticket_at, blocked}
for j = 1, m do
  redis.call('ZREMRANGEBYSCORE', lkey(j, 1), '-inf', now)
  redis.call('ZREMRANGEBYSCORE', lkey(j, 2), '-inf', now)
  redis.call('ZREMRANGEBYSCORE', lkey(j, 3), '-inf', now)
  out[#out + 1] = redis.call('ZCARD', lkey(j, 1))
end
return out
"""

# KEYS: per held bucket h:<id>, f:<limit>, k:<limit>. ARGV: holder, ttl ("" to release), the bucket ids.
HOLD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i = 1, #KEYS / 3 do
  local held, limit_held, index = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  if ARGV[2] == '' then
    redis.call('ZREM', held, ARGV[1])
    redis.call('ZREM', limit_held, ARGV[1])
  elseif redis.call('ZSCORE', held, ARGV[1]) then
    local ttl = tonumber(ARGV[2])
    for _, key in ipairs({held, limit_held}) do
      redis.call('ZADD', key, now + ttl, ARGV[1])
      redis.call('PEXPIRE', key, math.ceil(ttl * 1000) + 60000)
    end
    local seen = tonumber(redis.call('ZSCORE', index, ARGV[2 + i]))
    if not seen or seen < now + ttl then redis.call('ZADD', index, now + ttl, ARGV[2 + i]) end
    if redis.call('PTTL', index) < math.ceil(ttl * 1000) + 60000 then
      redis.call('PEXPIRE', index, math.ceil(ttl * 1000) + 60000)
    end
  end
end
return 0
"""

# A read. ARGV: the key prefix, how many buckets of each limit to look at (those live the longest),
# how many busiest to return, then the limit names. Per limit: waiting, in flight, buckets live,
# reserved until ('' for none), the number of loads, then per load its id, waiting, in flight.
SNAPSHOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local prefix, cap, top = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local after = '(' .. string.format('%.6f', now)
local out = {}
for j = 4, #ARGV do
  local limit = ARGV[j]
  local index = prefix .. ':k:' .. limit
  local live, reserved, loads = 0, nil, {}
  local ids = redis.call('ZREVRANGEBYSCORE', index, '+inf', after, 'LIMIT', 0, cap)
  for _, id in ipairs(ids) do
    local waiting = redis.call('ZCOUNT', prefix .. ':wb:' .. id, after, '+inf')
    local held = redis.call('ZCOUNT', prefix .. ':h:' .. id, after, '+inf')
    local tat = tonumber(redis.call('GET', prefix .. ':b:' .. id))
    local ahead = tat ~= nil and tat > now
    if ahead and (reserved == nil or tat > reserved) then reserved = tat end
    if ahead or waiting > 0 or held > 0 then live = live + 1 end
    if waiting > 0 or held > 0 then loads[#loads + 1] = {id, waiting, held} end
  end
  table.sort(loads, function(a, b)
    if a[2] ~= b[2] then return a[2] > b[2] end
    if a[3] ~= b[3] then return a[3] > b[3] end
    return a[1] < b[1]
  end)
  local indexed = redis.call('ZCOUNT', index, after, '+inf')
  out[#out + 1] = redis.call('ZCOUNT', prefix .. ':w:' .. limit, after, '+inf')
  out[#out + 1] = redis.call('ZCOUNT', prefix .. ':f:' .. limit, after, '+inf')
  out[#out + 1] = indexed > #ids and indexed or live
  out[#out + 1] = reserved and string.format('%.6f', reserved) or ''
  out[#out + 1] = math.min(#loads, top)
  for i = 1, math.min(#loads, top) do
    out[#out + 1] = loads[i][1]
    out[#out + 1] = loads[i][2]
    out[#out + 1] = loads[i][3]
  end
end
return out
"""
# A snapshot looks at this many buckets of a limit: with more live, `keys` counts the index (buckets
# live until a time still ahead, idle ones included) and the top keys and reserved_until are of the
# buckets with the latest such time.
SNAPSHOT_BUCKETS = 1000


@contextlib.contextmanager
def _mapped(action: str) -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise BackendUnavailable(f"redis flow limits: {action}: {exc}") from exc


class RedisLedger:
    def __init__(self, url: str, *, prefix: str = "openhqm") -> None:
        self._url = url
        self._prefix = f"{prefix}:flow"
        self._client: aioredis.Redis | None = None
        self._acquire: Any = None
        self._hold: Any = None
        self._snapshot: Any = None

    async def connect(self) -> None:
        if self._client is not None:
            return
        try:
            client = pooled_client(self._url)
        except ValueError as exc:
            raise ConfigError(f"results.redis.url {mask_url(self._url)!r}: {exc}") from exc
        self._client = client
        self._acquire = client.register_script(ACQUIRE)
        self._hold = client.register_script(HOLD)
        self._snapshot = client.register_script(SNAPSHOT)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _held(self, buckets: Sequence[Bucket]) -> tuple[list[str], list[str]]:
        """HOLD's keys and bucket ids for the buckets with a concurrency limit."""
        held = [b for b in buckets if b.max_concurrency is not None]
        keys = [f"{self._prefix}:{kind}:{name}" for b in held
                for kind, name in (("h", b.id), ("f", b.limit), ("k", b.limit))]
        return keys, [b.id for b in held]

    async def acquire(self, buckets: Sequence[Bucket], holder: str, *, ticket: bool, concurrency_delay_s: float,
                      ttl_s: float) -> Verdict:
        limits = limits_of(buckets)
        keys = [f"{self._prefix}:{kind}:{b.id}" for b in buckets for kind in ("b", "h", "wb")]
        keys += [f"{self._prefix}:{kind}:{limit}" for limit in limits for kind in ("w", "f", "k")]
        args: list[Any] = [len(buckets), len(limits), holder, int(ticket), repr(concurrency_delay_s), repr(ttl_s),
                           repr(WAITING_GRACE_S)]
        for b in buckets:
            args += [repr(b.rate_per_s) if b.rate_per_s else "", b.burst, b.max_concurrency or "", b.limit,
                     limits.index(b.limit) + 1, b.id]
        args += limits
        with _mapped("acquire"):
            out = await self._acquire(keys=keys, args=args)
        blocked = out[3].decode() if out[3] else None
        return Verdict(bool(out[0]), float(out[1]), float(out[2]) if out[2] else None, blocked,
                       tuple(zip(limits, (int(c) for c in out[4:]), strict=True)))

    async def release(self, buckets: Sequence[Bucket], holder: str) -> None:
        keys, ids = self._held(buckets)
        if keys:
            with _mapped("release"):
                await self._hold(keys=keys, args=[holder, "", *ids])

    async def refresh(self, buckets: Sequence[Bucket], holder: str, ttl_s: float) -> None:
        keys, ids = self._held(buckets)
        if keys:
            with _mapped("refresh"):
                await self._hold(keys=keys, args=[holder, repr(ttl_s), *ids])

    async def snapshot(self, limits: Sequence[str]) -> list[LimitState]:
        if not limits:
            return []
        with _mapped("snapshot"):
            # One more than named: the unkeyed bucket (id = limit) may be among them.
            out = await self._snapshot(keys=[], args=[self._prefix, SNAPSHOT_BUCKETS, TOP_KEYS + 1, *limits])
        states, at = [], 0
        for limit in limits:
            waiting, in_flight, keys, reserved, count = out[at:at + 5]
            loads = [(out[i].decode(), int(out[i + 1]), int(out[i + 2])) for i in range(at + 5, at + 5 + 3 * count, 3)]
            at += 5 + 3 * int(count)
            states.append(LimitState(limit, waiting=int(waiting), in_flight=int(in_flight), keys=int(keys),
                                     reserved_until=float(reserved) if reserved else None,
                                     top_keys=top_keys(limit, loads)))
        return states
