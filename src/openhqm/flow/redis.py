"""Flow limits in the Redis of the result store (`results.redis.url`, keys under `<prefix>:flow:`).

One Lua script per acquire, release and refresh: Redis runs a script alone, so a decision over all
of a request's buckets is atomic across every process. Times are the server's (`TIME`), so workers
on hosts with skewed clocks still share one bucket. Keys expire once idle; like the store, no Cluster.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from openhqm.errors import BackendUnavailable, ConfigError
from openhqm.flow.ledger import WAITING_GRACE_S, Verdict, limits_of
from openhqm.flow.limits import Bucket
from openhqm.redact import mask_url

# KEYS: per bucket its tat key and holders key, then one waiting key per limit.
# ARGV: n, m, holder, ticket, concurrency delay, ttl, grace, then per bucket rate, burst, max, limit,
# then the m limit names. Steps and order as ledger.decide.
ACQUIRE = """
local n, m = tonumber(ARGV[1]), tonumber(ARGV[2])
local holder, ticket = ARGV[3], ARGV[4] == '1'
local conc_delay, ttl, grace = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function spec(i)
  local b = 7 + (i - 1) * 4
  return tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), ARGV[b + 4]
end
local function extend(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
local admitted, delay, ticket_at, blocked = 1, 0, '', ''
for i = 1, n do
  local _, _, maxc, limit = spec(i)
  if maxc then
    local hk = KEYS[2 * i]
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
      tats[i] = tonumber(redis.call('GET', KEYS[2 * i - 1])) or now
      local conforms = math.max(tats[i], now) - (burst - 1) / rate
      if conforms > start then start, blocked = conforms, limit end
    end
  end
  for i = 1, n do
    local rate = spec(i)
    if rate then
      local tat = math.max(tats[i], start) + 1 / rate
      redis.call('SET', KEYS[2 * i - 1], string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 60000)
    end
  end
  if blocked ~= '' then
    admitted, delay, ticket_at = 0, start - now, string.format('%.6f', start)
  end
end
if admitted == 1 then
  for i = 1, n do
    local _, _, maxc = spec(i)
    if maxc then
      redis.call('ZADD', KEYS[2 * i], now + ttl, holder)
      extend(KEYS[2 * i], math.ceil(ttl * 1000) + 60000)
    end
  end
  for j = 1, m do redis.call('ZREM', KEYS[2 * n + j], holder) end
else
  for j = 1, m do
    if ARGV[7 + 4 * n + j] == blocked then
      redis.call('ZADD', KEYS[2 * n + j], now + delay + grace, holder)
      extend(KEYS[2 * n + j], math.ceil((delay + grace) * 1000) + 60000)
    end
  end
end
local out = {admitted, string.format('%.6f', delay), ticket_at, blocked}
for j = 1, m do
  redis.call('ZREMRANGEBYSCORE', KEYS[2 * n + j], '-inf', now)
  out[#out + 1] = redis.call('ZCARD', KEYS[2 * n + j])
end
return out
"""

# KEYS: holders keys. ARGV: holder, ttl ("" to release).
HOLD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for _, key in ipairs(KEYS) do
  if ARGV[2] == '' then
    redis.call('ZREM', key, ARGV[1])
  elseif redis.call('ZSCORE', key, ARGV[1]) then
    redis.call('ZADD', key, 'XX', now + tonumber(ARGV[2]), ARGV[1])
    redis.call('PEXPIRE', key, math.ceil(tonumber(ARGV[2]) * 1000) + 60000)
  end
end
return 0
"""


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

    async def connect(self) -> None:
        if self._client is not None:
            return
        try:
            client = aioredis.from_url(self._url)
        except ValueError as exc:
            raise ConfigError(f"results.redis.url {mask_url(self._url)!r}: {exc}") from exc
        self._client = client
        self._acquire = client.register_script(ACQUIRE)
        self._hold = client.register_script(HOLD)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _holders(self, buckets: Sequence[Bucket]) -> list[str]:
        return [f"{self._prefix}:h:{b.id}" for b in buckets if b.max_concurrency is not None]

    async def acquire(self, buckets: Sequence[Bucket], holder: str, *, ticket: bool, concurrency_delay_s: float,
                      ttl_s: float) -> Verdict:
        limits = limits_of(buckets)
        keys = [key for b in buckets for key in (f"{self._prefix}:b:{b.id}", f"{self._prefix}:h:{b.id}")]
        keys += [f"{self._prefix}:w:{limit}" for limit in limits]
        args: list[Any] = [len(buckets), len(limits), holder, int(ticket), repr(concurrency_delay_s), repr(ttl_s),
                           repr(WAITING_GRACE_S)]
        for b in buckets:
            args += [repr(b.rate_per_s) if b.rate_per_s else "", b.burst, b.max_concurrency or "", b.limit]
        args += limits
        with _mapped("acquire"):
            out = await self._acquire(keys=keys, args=args)
        blocked = out[3].decode() if out[3] else None
        return Verdict(bool(out[0]), float(out[1]), float(out[2]) if out[2] else None, blocked,
                       tuple(zip(limits, (int(c) for c in out[4:]), strict=True)))

    async def release(self, buckets: Sequence[Bucket], holder: str) -> None:
        keys = self._holders(buckets)
        if keys:
            with _mapped("release"):
                await self._hold(keys=keys, args=[holder, ""])

    async def refresh(self, buckets: Sequence[Bucket], holder: str, ttl_s: float) -> None:
        keys = self._holders(buckets)
        if keys:
            with _mapped("refresh"):
                await self._hold(keys=keys, args=[holder, repr(ttl_s)])
