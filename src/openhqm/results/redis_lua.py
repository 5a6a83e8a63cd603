"""Lua scripts of the Redis result store: each write is one script, so a record, its counters and
its indexes change together. Key layout and argument order are described in results/redis.py.
"""

from __future__ import annotations

from openhqm.constants import TERMINAL

_COMMON = "local TERMINAL = {" + ", ".join(f"{s}=true" for s in sorted(TERMINAL)) + "}\n" + """
local function done_member(cid, status, sess)
  if sess then return cmsgpack.pack({cid, status, sess}) end
  return cmsgpack.pack({cid, status})
end
local function finish(key, cid, status, sess, score, ttl_ms, channel)
  redis.call('ZADD', KEYS[3], score, done_member(cid, status, sess))
  redis.call('PEXPIRE', key, ttl_ms)
  redis.call('PUBLISH', channel, cid)
end
"""

# KEYS: req, counts, done, submitted, unfinished[, session]
# ARGV: data, status, id, done score, ttl ms, channel, submitted_at, envelope ('' for none)[, sid]
CREATE = _COMMON + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local sess = ARGV[9]
redis.call('HSET', KEYS[1], 'd', ARGV[1], 's', ARGV[2], 'v', 1)
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'b', ARGV[8]) end
redis.call('ZADD', KEYS[4], ARGV[7], ARGV[3])
if sess then
  redis.call('HSET', KEYS[1], 'sess', sess)
  redis.call('ZADD', KEYS[6], ARGV[7], ARGV[3])
end
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
if TERMINAL[ARGV[2]] then
  finish(KEYS[1], ARGV[3], ARGV[2], sess, ARGV[4], ARGV[5], ARGV[6])
else
  redis.call('ZADD', KEYS[5], ARGV[7], ARGV[3])
end
return 1
"""

# KEYS: req, counts, done, unfinished
# ARGV: expected version, data, status, id, done score, ttl ms, channel, submitted_at
# `unfinished` changes only when terminal-ness does, so a record created before that index existed
# (by an older version) stays out of it until it is finished and reopened.
TRANSITION = _COMMON + """
local cur = redis.call('HMGET', KEYS[1], 's', 'v', 'sess')
if not cur[1] then return -1 end
if cur[2] ~= ARGV[1] then return 0 end
local old, new, sess = cur[1], ARGV[3], cur[3]
redis.call('HSET', KEYS[1], 'd', ARGV[2], 's', new)
redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('HINCRBY', KEYS[2], old, -1)
redis.call('HINCRBY', KEYS[2], new, 1)
if TERMINAL[old] then
  redis.call('ZREM', KEYS[3], done_member(ARGV[4], old, sess))
  if not TERMINAL[new] then redis.call('ZADD', KEYS[4], ARGV[8], ARGV[4]) end
end
if TERMINAL[new] then
  finish(KEYS[1], ARGV[4], new, sess, ARGV[5], ARGV[6], ARGV[7])
  if not TERMINAL[old] then redis.call('ZREM', KEYS[4], ARGV[4]) end
end
return 1
"""

# KEYS: req, counts, done  ARGV: id, prefix
DELETE = _COMMON + """
local cur = redis.call('HMGET', KEYS[1], 's', 'sess')
if not cur[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HINCRBY', KEYS[2], cur[1], -1)
if cur[2] then redis.call('ZREM', ARGV[2] .. ':session:' .. cur[2], ARGV[1]) end
redis.call('ZREM', ARGV[2] .. ':submitted', ARGV[1])
if TERMINAL[cur[1]] then
  redis.call('ZREM', KEYS[3], done_member(ARGV[1], cur[1], cur[2]))
else
  redis.call('ZREM', ARGV[2] .. ':unfinished', ARGV[1])
end
return 1
"""

# KEYS: counts, done  ARGV: older_than, batch size, prefix
# A record that its Redis TTL already removed still has its index entry here, so counts heal too.
CLEANUP = """
local members = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1], 'LIMIT', ARGV[4], ARGV[2])
local wanted = nil
if #ARGV > 4 then
  wanted = {}
  for i = 5, #ARGV do wanted[ARGV[i]] = true end
end
local removed, ids, skipped = {}, {}, 0
for _, member in ipairs(members) do
  local entry = cmsgpack.unpack(member)
  if wanted == nil or wanted[entry[2]] then
    redis.call('DEL', ARGV[3] .. ':req:' .. entry[1])
    redis.call('HINCRBY', KEYS[1], entry[2], -1)
    if entry[3] then redis.call('ZREM', ARGV[3] .. ':session:' .. entry[3], entry[1]) end
    table.insert(removed, member)
    table.insert(ids, entry[1])
  else
    skipped = skipped + 1
  end
end
if #removed > 0 then
  redis.call('ZREM', KEYS[2], unpack(removed))
  redis.call('ZREM', ARGV[3] .. ':submitted', unpack(ids))
end
return {#removed, skipped, #members}
"""

# KEYS: dead, dead:order  ARGV: id
TAKE_DEAD = """
local data = redis.call('HGET', KEYS[1], ARGV[1])
if not data then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return data
"""

PURGE_DEAD = """
local n = redis.call('HLEN', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
return n
"""

# Before the keyed state, API schedules had a hash of their own: moved into the state hash once.
# KEYS: legacy schedules hash, the schedule state hash.
MOVE_LEGACY_SCHEDULES = """
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do redis.call('HSETNX', KEYS[2], entries[i], entries[i + 1]) end
redis.call('DEL', KEYS[1])
return #entries / 2
"""
