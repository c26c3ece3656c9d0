"""The Lua scripts of the Redis driver, one per atomic operation (see drivers/redis.py).

Each runs in one round trip and either applies completely or not at all; a fenced write
checks the lease in the same script as the write itself. Wake times travel as the strings
Python's ``repr`` and Redis print, never as Lua numbers (a Lua number reply truncates to an
integer, and Lua prints 14 digits), so a float round-trips exactly.
"""

LEASE_CHECK = """
local function lease_lost(lease, token, now)
  if redis.call('HGET', lease, 'token') ~= token then return true end
  local exp = redis.call('HGET', lease, 'exp')
  return (not exp) or tonumber(exp) <= tonumber(now)
end
"""

# apply(kv, ix, first): ARGV from ``first`` on holds (op, a, b) triples: S key value |
# D key - | R min max (ZRANGEBYLEX bounds). Chunks of 1000: unpack() has a stack limit.
APPLY = """
local function apply(kv, ix, first)
  for i = first, #ARGV, 3 do
    local op, a, b = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    if op == 'S' then
      redis.call('HSET', kv, a, b)
      redis.call('ZADD', ix, 0, a)
    elseif op == 'D' then
      redis.call('HDEL', kv, a)
      redis.call('ZREM', ix, a)
    else
      while true do
        local doomed = redis.call('ZRANGEBYLEX', ix, a, b, 'LIMIT', 0, 1000)
        if #doomed == 0 then break end
        redis.call('HDEL', kv, unpack(doomed))
        redis.call('ZREM', ix, unpack(doomed))
      end
    end
  end
end
"""

# rows(kv, ix, min, max): key1, value1, key2, value2, ... in byte order.
ROWS = """
local function rows(kv, ix, min, max)
  local keys = redis.call('ZRANGEBYLEX', ix, min, max)
  local out = {}
  for i = 1, #keys, 1000 do
    local chunk = {unpack(keys, i, math.min(i + 999, #keys))}
    local values = redis.call('HMGET', kv, unpack(chunk))
    for j = 1, #chunk do
      if values[j] then out[#out + 1] = chunk[j]; out[#out + 1] = values[j] end
    end
  end
  return out
end
"""

# hex(s): a workflow id's bytes in hex, as RedisStore builds its keys (``N:w:{#<hex>}``).
HEX = """
local function hex(s)
  local parts = {}
  for i = 1, #s, 64 do
    local chunk = s:sub(i, i + 63)
    parts[#parts + 1] = string.format(string.rep('%02x', #chunk), string.byte(chunk, 1, -1))
  end
  return table.concat(parts)
end
"""

# KEYS: kv, ix, lease. ARGV: token ('' = unfenced), now, then the ops of apply().
WRITE = (
    LEASE_CHECK
    + APPLY
    + """
if ARGV[1] ~= '' and lease_lost(KEYS[3], ARGV[1], ARGV[2]) then return 0 end
apply(KEYS[1], KEYS[2], 3)
return 1
"""
)

# KEYS: kv, ix. ARGV: min, max. Returns key1, value1, key2, value2, ... in byte order.
LIST = (
    ROWS
    + """
return rows(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
"""
)

# KEYS: alarms. ARGV: now, expires, limit, owner, workflow key head ('N:w:{#'), its tail
# ('}'). Returns (id, token, wake time, {key1, value1, ...}) per claim, the rows being the
# claimed namespace as list() gives it. Due alarms whose lease is live (runs in flight) sit
# at the front of the set, so it pages past them in small pages and stops at the limit:
# a claim costs about (runs in flight + limit) entries, not the whole due backlog.
CLAIM = (
    ROWS
    + HEX
    + """
local now, limit = tonumber(ARGV[1]), tonumber(ARGV[3])
local page = limit + 32
local out, offset = {}, 0
while #out < limit do
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES',
                         'LIMIT', offset, page)
  if #due == 0 then break end
  offset = offset + #due / 2
  for i = 1, #due, 2 do
    local id = due[i]
    local head = ARGV[5] .. hex(id) .. ARGV[6]
    local lease = head .. ':lease'
    local exp = redis.call('HGET', lease, 'exp')
    if (not exp) or tonumber(exp) <= now then
      local token = redis.call('HINCRBY', lease, 'token', 1)
      redis.call('HSET', lease, 'owner', ARGV[4], 'exp', ARGV[2])
      out[#out + 1] = {id, token, due[i + 1], rows(head .. ':kv', head .. ':ix', '-', '+')}
      if #out == limit then break end
    end
  end
end
return out
"""
)

# KEYS: kv, ix, lease, alarms, info, all, state set, updated. ARGV: id, name, state, wake
# time, owner ('' = none), lease expiry, due channel, -now (the updated score), then key,
# value pairs. Returns {0, name} when the id exists, else {1, token} (token 0 without an
# owner).
CREATE = """
if redis.call('HSETNX', KEYS[5], 'n' .. ARGV[1], ARGV[2]) == 0 then
  return {0, redis.call('HGET', KEYS[5], 'n' .. ARGV[1])}
end
redis.call('HSET', KEYS[5], 's' .. ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[6], 0, ARGV[1])
redis.call('ZADD', KEYS[7], 0, ARGV[1])
redis.call('ZADD', KEYS[8], ARGV[8], ARGV[1])
for i = 9, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[2], 0, ARGV[i])
end
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
if ARGV[5] == '' then
  redis.call('PUBLISH', ARGV[7], '')
  return {1, 0}
end
-- Claimed with its creation: no wake-up, since no other worker may run it.
local token = redis.call('HINCRBY', KEYS[3], 'token', 1)
redis.call('HSET', KEYS[3], 'owner', ARGV[5], 'exp', ARGV[6])
return {1, token}
"""

# KEYS: kv, ix, lease, alarms, info, all, state set, updated. ARGV: token, now, id, state,
# state key head, claimed wake time ('' = none), next wake time ('' = none), due channel,
# the workflow's channel, -now (the updated score), then the ops of apply(). Settles the alarm as
# engine.store.settled_alarm does; a waiting client hears of the end on the workflow's channel.
FINISH = (
    LEASE_CHECK
    + APPLY
    + """
if lease_lost(KEYS[3], ARGV[1], ARGV[2]) then return 0 end
apply(KEYS[1], KEYS[2], 11)
local id = ARGV[3]
redis.call('HSETNX', KEYS[5], 'n' .. id, '')
local old = redis.call('HGET', KEYS[5], 's' .. id)
if old then redis.call('ZREM', ARGV[5] .. old, id) end
redis.call('HSET', KEYS[5], 's' .. id, ARGV[4])
redis.call('ZADD', KEYS[6], 0, id)
redis.call('ZADD', KEYS[7], 0, id)
redis.call('ZADD', KEYS[8], ARGV[10], id)
local current, claimed, wake = redis.call('ZSCORE', KEYS[4], id), ARGV[6], ARGV[7]
local settled = current
if (not current) or (claimed ~= '' and tonumber(current) == tonumber(claimed)) then
  settled = wake
elseif wake ~= '' and tonumber(wake) < tonumber(current) then
  settled = wake
end
if settled == '' then
  redis.call('ZREM', KEYS[4], id)
elseif (not current) or tonumber(settled) ~= tonumber(current) then
  redis.call('ZADD', KEYS[4], settled, id)
  redis.call('PUBLISH', ARGV[8], '')
end
redis.call('HDEL', KEYS[3], 'owner', 'exp')
redis.call('PUBLISH', ARGV[9], '')
return 1
"""
)

# KEYS: kv, ix, lease, alarms, info, all, pending state set, updated. ARGV: id, owner, now,
# lease expiry, name, pending state, -now (the updated score). Takes an absent or expired
# lease whether or not the alarm is due, registering the id if new. Returns false while a
# live lease is held, else {token, alarm ('' = none), {key1, value1, ...}}.
CLAIM_ONE = (
    ROWS
    + """
local exp = redis.call('HGET', KEYS[3], 'exp')
if exp and tonumber(exp) > tonumber(ARGV[3]) then return false end
local token = redis.call('HINCRBY', KEYS[3], 'token', 1)
redis.call('HSET', KEYS[3], 'owner', ARGV[2], 'exp', ARGV[4])
local id = ARGV[1]
if redis.call('HSETNX', KEYS[5], 'n' .. id, ARGV[5]) == 1 then
  redis.call('HSET', KEYS[5], 's' .. id, ARGV[6])
  redis.call('ZADD', KEYS[6], 0, id)
  redis.call('ZADD', KEYS[7], 0, id)
end
redis.call('ZADD', KEYS[8], ARGV[7], id)
local alarm = redis.call('ZSCORE', KEYS[4], id) or ''
return {token, alarm, rows(KEYS[1], KEYS[2], '-', '+')}
"""
)

# KEYS: kv, ix, alarms. ARGV: id, message key, value, wake time, the workflow's channel, due
# channel. Unfenced: a message key is fresh, and anyone may send.
POST = """
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('PUBLISH', ARGV[5], '')
redis.call('PUBLISH', ARGV[6], '')
return 1
"""

# KEYS: kv, ix, lease, alarms, info, cancelled state set, updated. ARGV: id, -now, state,
# state key head, the workflow's channel, then the ops of apply(). The lease loses its owner
# and expiry but keeps its token: the holder is fenced off, the next claim counts on.
CANCEL = (
    APPLY
    + """
apply(KEYS[1], KEYS[2], 6)
local id = ARGV[1]
if redis.call('HEXISTS', KEYS[5], 'n' .. id) == 1 then
  local old = redis.call('HGET', KEYS[5], 's' .. id)
  if old then redis.call('ZREM', ARGV[4] .. old, id) end
  redis.call('HSET', KEYS[5], 's' .. id, ARGV[3])
  redis.call('ZADD', KEYS[6], 0, id)
  redis.call('ZADD', KEYS[7], ARGV[2], id)
end
redis.call('ZREM', KEYS[4], id)
redis.call('HDEL', KEYS[3], 'owner', 'exp')
redis.call('PUBLISH', ARGV[5], '')
return 1
"""
)

# KEYS: lease. ARGV: token, now, new expiry ('' releases).
RENEW = (
    LEASE_CHECK
    + """
if ARGV[3] == '' then
  if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
    redis.call('HDEL', KEYS[1], 'owner', 'exp')
  end
  return 1
end
if lease_lost(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'exp', ARGV[3])
return 1
"""
)
