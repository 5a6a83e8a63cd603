"""What the Redis Streams backend keeps in Redis and what Redis answers: the key layout and entry
fields, the Lua scripts (each step that touches several keys runs atomically), and the error map
(the scripts and the server tell some errors apart only by their text).

Keys of queue Q (`{Q}` is a hash tag): streams `openhqm:q:{Q}:p01`..`p15`, one per priority, with
the consumer group `openhqm`; `openhqm:q:{Q}:delayed`, a sorted set scored by due time;
`openhqm:q:{Q}:wake`, a list that wakes the delay mover. Dead letters go to queue `Q.dlq`, same layout.
Every queue script receives the queue's keys in one fixed order (`Keys.all`): KEYS[1..15] are the
streams of priorities 1..15, KEYS[16] the delayed sorted set, KEYS[17] the wake list. Settling
scripts receive only the keys they touch. Stream entry fields: `body`, `id`, `attempts` (deliveries
before this entry), optional `key`, and `reason` in a dead-letter queue.

Settles are fenced like the SQLite backend's: they act only while this consumer still holds the entry
at the delivery count it was given. After the lease ran out and the entry was claimed again, a late
settle changes nothing. If the consumer group is gone (Redis restarted without data, FLUSH,
XGROUP DESTROY), no one else can hold the entry, so the settle goes ahead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis import exceptions as rx

from openhqm.backends.kit import ErrorMap
from openhqm.constants import MAX_PRIORITY
from openhqm.errors import BackendError, BackendUnavailable, OpenHQMError

GROUP = "openhqm"
KEY_PREFIX = "openhqm:q:"


@dataclass(frozen=True)
class Keys:
    """The keys of one queue; `{queue}` is a hash tag, so they share a slot."""

    queue: str
    streams: tuple[str, ...]  # index 0 is priority 1
    delayed: str
    wake: str

    @classmethod
    def of(cls, queue: str) -> Keys:
        base = f"{KEY_PREFIX}{{{queue}}}"
        streams = tuple(f"{base}:p{level:02d}" for level in range(1, MAX_PRIORITY + 1))
        return cls(queue, streams, f"{base}:delayed", f"{base}:wake")

    def stream(self, priority: int) -> str:
        return self.streams[priority - 1]

    @property
    def all(self) -> list[str]:
        return [*self.streams, self.delayed, self.wake]


@dataclass(frozen=True)
class Entry:
    """A stream entry as FETCH and RECLAIM return it: {level, id, fields, delivery count}."""

    level: int
    entry_id: bytes
    fields: dict[bytes, bytes]
    count: int  # times Redis delivered this entry (the PEL's delivery counter)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Entry:
        level, entry_id, flat, count = row
        return cls(int(level), entry_id, dict(zip(flat[::2], flat[1::2], strict=True)), int(count))

    @classmethod
    def from_read(cls, reply: Any, keys: Keys) -> list[Entry]:
        """XREADGROUP's reply as redis-py parses it on RESP2 (`protocol=2` is forced for this shape)."""
        levels = {stream.encode(): level for level, stream in enumerate(keys.streams, 1)}
        entries = []
        for stream, items in reply or []:
            for entry_id, fields in items:
                flat = fields if isinstance(fields, dict) else dict(zip(fields[::2], fields[1::2], strict=True))
                entries.append(cls(levels[stream], entry_id, flat, 1))
        return sorted(entries, key=lambda e: -e.level)

    @staticmethod
    def new_fields(body: bytes, message_id: str, key: str | None) -> list[Any]:
        """A published message's fields: no deliveries before this entry."""
        return [b"body", body, b"id", message_id, b"attempts", 0, *([b"key", key] if key is not None else [])]

    @property
    def prior_attempts(self) -> int:
        return int(self.fields.get(b"attempts", b"0"))

    @property
    def attempt(self) -> int:
        return self.prior_attempts + self.count

    @property
    def body(self) -> bytes:
        return self.fields.get(b"body", b"")

    @property
    def message_id(self) -> str:
        return (self.fields.get(b"id") or self.entry_id).decode()

    @property
    def key(self) -> str | None:
        key = self.fields.get(b"key")
        return key.decode() if key is not None else None


class GroupLost(BackendError):
    """The consumer group or stream vanished (Redis restart, FLUSH, XGROUP DESTROY)."""


def _refine(exc: BaseException, action: str) -> OpenHQMError | None:
    text = str(exc) if isinstance(exc, rx.ResponseError) else ""
    if text.startswith(("NOGROUP", "UNBLOCKED")):
        return GroupLost(f"redis: {action}: {text}")
    if text.startswith("OPENHQM_FULL"):
        return BackendUnavailable(f"redis: {action}: queue is full ({text.split(' ', 1)[1]}); "
                                  "raise queue.redis.maxlen or add workers")
    return None


# redis-py's own timeouts are RedisErrors; asyncio.timeout around every call gives TimeoutError.
errors = ErrorMap("redis", [((rx.ConnectionError, rx.TimeoutError, rx.OutOfMemoryError), BackendUnavailable),
                            (rx.RedisError, BackendError)], refine=_refine)


_COMMON = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- 1: this delivery holds the entry; 0: it does not; 2: the group is gone.
local function holder(key, group, consumer, id, count)
  local p = redis.pcall('XPENDING', key, group, id, id, 1)
  if p.err then
    if string.find(p.err, 'NOGROUP') then return 2 end
    error(p.err)
  end
  if p[1] and p[1][2] == consumer and tonumber(p[1][4]) == tonumber(count) then return 1 end
  return 0
end

-- Removes the entry if this delivery holds it; returns its fields, or nil.
local function take(key, group, consumer, id, count)
  local h = holder(key, group, consumer, id, count)
  if h == 0 then return nil end
  local e = redis.call('XRANGE', key, id, id)
  if h == 1 then redis.call('XACK', key, group, id) end
  redis.call('XDEL', key, id)
  if #e == 0 then return nil end
  return e[1][2]
end

local function with_field(fields, name, value)
  local out, found = {}, false
  for i = 1, #fields, 2 do
    out[#out + 1] = fields[i]
    if fields[i] == name then
      out[#out + 1] = value
      found = true
    else
      out[#out + 1] = fields[i + 1]
    end
  end
  if not found then
    out[#out + 1] = name
    out[#out + 1] = value
  end
  return out
end

-- Holds a message in the delayed set (score = due time in ms, server clock) and wakes one mover
-- when it became the earliest, so a mover waiting for a later message re-reads its deadline.
local function schedule(zkey, wkey, level, delay_ms, nonce, fields)
  local due = now_ms() + delay_ms
  local member = cmsgpack.pack(level, nonce, unpack(fields))
  redis.call('ZADD', zkey, due, member)
  if redis.call('ZRANGE', zkey, 0, 0)[1] == member then
    redis.call('LPUSH', wkey, '1')
    redis.call('LTRIM', wkey, 0, 0)
  end
  return due
end
"""

# KEYS: queue keys. ARGV: maxlen, level, delay_ms, nonce, field, value, ...
# Refuses instead of trimming: the streams hold only unsettled entries (acked ones are deleted),
# so trimming could only ever drop messages that were never processed.
PUBLISH = _COMMON + """
local total = redis.call('ZCARD', KEYS[16])
for i = 1, 15 do total = total + redis.call('XLEN', KEYS[i]) end
if total >= tonumber(ARGV[1]) then
  return redis.error_reply('OPENHQM_FULL queue holds ' .. total .. ' messages')
end
local level = tonumber(ARGV[2])
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
local delay_ms = tonumber(ARGV[3])
if delay_ms > 0 then
  schedule(KEYS[16], KEYS[17], level, delay_ms, ARGV[4], fields)
  return 'delayed'
end
return redis.call('XADD', KEYS[level], '*', unpack(fields))
"""

# KEYS: queue keys. ARGV: batch. Moves due messages into their streams; returns the ms until the
# next one is due (0: more are due now, -1: none waits).
MOVE_DUE = _COMMON + """
local now = now_ms()
local batch = tonumber(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[16], '-inf', now, 'LIMIT', 0, batch)
for _, member in ipairs(due) do
  local m = {cmsgpack.unpack(member)}
  redis.call('XADD', KEYS[m[1]], '*', unpack(m, 3))
  redis.call('ZREM', KEYS[16], member)
end
if #due == batch then return 0 end
local head = redis.call('ZRANGE', KEYS[16], 0, 0, 'WITHSCORES')
if #head == 0 then return -1 end
return math.max(1, tonumber(head[2]) - now)
"""

# KEYS: 15 streams. ARGV: group. Creates missing groups (and streams) from the first entry.
ENSURE_GROUPS = """
for _, key in ipairs(KEYS) do
  local r = redis.pcall('XGROUP', 'CREATE', key, ARGV[1], '0', 'MKSTREAM')
  if r.err and not string.find(r.err, 'BUSYGROUP') then return redis.error_reply(r.err) end
end
return #KEYS
"""

# KEYS: 15 streams. ARGV: group, consumer, count. New entries, highest priority first, at most
# `count` in all (one XREADGROUP over every stream would return `count` from each).
FETCH = """
local out, want = {}, tonumber(ARGV[3])
for level = 15, 1, -1 do
  local res = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', want, 'STREAMS', KEYS[level], '>')
  if res then
    for _, e in ipairs(res[1][2]) do
      out[#out + 1] = {level, e[1], e[2], 1}
      want = want - 1
    end
    if want <= 0 then break end
  end
end
return out
"""

# KEYS: 15 streams. ARGV: group, consumer, min_idle_ms, count, stale_ms, cursor of level 1..15.
# Claims entries whose lease ran out (their consumer died or stalled), highest priority first, with
# their delivery count. With stale_ms > 0, also forgets consumers (of crashed processes) that hold
# nothing and were idle that long; a live one that is forgotten is recreated by its next read.
# Returns {entries, cursors, ids of pending entries that had been deleted from the stream}.
RECLAIM = """
local group, consumer, min_idle = ARGV[1], ARGV[2], ARGV[3]
local want, stale = tonumber(ARGV[4]), tonumber(ARGV[5])
local out, cursors, lost = {}, {}, {}
for level = 15, 1, -1 do
  local key, cursor = KEYS[level], ARGV[5 + level]
  if want > 0 then
    local res = redis.call('XAUTOCLAIM', key, group, consumer, min_idle, cursor, 'COUNT', want)
    cursor = res[1]
    for _, e in ipairs(res[2]) do
      local p = redis.call('XPENDING', key, group, e[1], e[1], 1)
      out[#out + 1] = {level, e[1], e[2], p[1][4]}
      want = want - 1
    end
    for _, id in ipairs(res[3] or {}) do lost[#lost + 1] = id end
  end
  cursors[level] = cursor
  if stale > 0 then
    for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', key, group)) do
      local info = {}
      for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
      if info.pending == 0 and info.idle > stale and info.name ~= consumer then
        redis.call('XGROUP', 'DELCONSUMER', key, group, info.name)
      end
    end
  end
end
return {out, cursors, lost}
"""

# KEYS: stream. ARGV: group, consumer, id, count.
ACK = _COMMON + """
local h = holder(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
if h == 0 then return 0 end
if h == 1 then redis.call('XACK', KEYS[1], ARGV[1], ARGV[3]) end
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
"""

# KEYS: stream, delayed, wake. ARGV: group, consumer, id, count, attempts, delay_ms, level.
# Re-adds the message as a new entry that carries how often it was delivered.
NACK = _COMMON + """
local fields = take(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
if not fields then return 0 end
fields = with_field(fields, 'attempts', ARGV[5])
local delay_ms = tonumber(ARGV[6])
if delay_ms > 0 then
  schedule(KEYS[2], KEYS[3], tonumber(ARGV[7]), delay_ms, ARGV[3], fields)
else
  redis.call('XADD', KEYS[1], '*', unpack(fields))
end
return 1
"""

# KEYS: stream, dead-letter stream. ARGV: group, consumer, id, count, reason.
DEAD_LETTER = _COMMON + """
local fields = take(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
if not fields then return 0 end
fields = with_field(with_field(fields, 'attempts', '0'), 'reason', ARGV[5])
redis.call('XADD', KEYS[2], '*', unpack(fields))
return 1
"""

# KEYS: stream. ARGV: group, consumer, id, count, idle_ms. XCLAIM with JUSTID keeps the delivery
# count; IDLE sets how long the entry counts as idle already (Redis cannot set a future time).
EXTEND = _COMMON + """
if holder(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]) ~= 1 then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', ARGV[5], 'JUSTID')
return 1
"""

# KEYS: queue keys. ARGV: group. Ready = entries in the stream not yet delivered to the group
# (acked entries are deleted, so XLEN counts ready + in flight) plus delayed messages.
DEPTH = """
local n = redis.call('ZCARD', KEYS[16])
for i = 1, 15 do
  local len = redis.call('XLEN', KEYS[i])
  if len > 0 then
    local p = redis.pcall('XPENDING', KEYS[i], ARGV[1])
    local in_flight = 0
    if not p.err then in_flight = p[1] end
    n = n + math.max(0, len - in_flight)
  end
end
return n
"""

# KEYS: queue keys. ARGV: group. Deletes every message (in flight too) and recreates the group on
# streams that existed, so blocked readers carry on.
PURGE = """
local n = redis.call('ZCARD', KEYS[16])
redis.call('DEL', KEYS[16], KEYS[17])
for i = 1, 15 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    n = n + redis.call('XLEN', KEYS[i])
    redis.call('DEL', KEYS[i])
    redis.call('XGROUP', 'CREATE', KEYS[i], ARGV[1], '$', 'MKSTREAM')
  end
end
return n
"""

# KEYS: 15 streams. ARGV: group, consumer. Removes this consumer where it holds nothing.
LEAVE = """
for _, key in ipairs(KEYS) do
  local p = redis.pcall('XPENDING', key, ARGV[1], '-', '+', 1, ARGV[2])
  if not p.err and #p == 0 then redis.pcall('XGROUP', 'DELCONSUMER', key, ARGV[1], ARGV[2]) end
end
return 1
"""

SCRIPTS = (PUBLISH, MOVE_DUE, ENSURE_GROUPS, FETCH, RECLAIM, ACK, NACK, DEAD_LETTER, EXTEND, DEPTH, PURGE,
           LEAVE)
