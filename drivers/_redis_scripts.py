"""The Lua scripts of the Redis driver, one per atomic operation (see drivers/redis.py).

Each runs in one round trip and either applies completely or not at all; a fenced write
checks the lease in the same script as the write itself.
"""

LEASE_CHECK = """
local function lease_lost(lease, token, now)
  if redis.call('HGET', lease, 'token') ~= token then return true end
  local exp = redis.call('HGET', lease, 'exp')
  return (not exp) or tonumber(exp) <= tonumber(now)
end
"""

# KEYS: kv, ix, lease. ARGV: token ('' = unfenced), now, then (op, a, b) triples:
# S key value | D key - | R min max (ZRANGEBYLEX bounds). Chunks of 1000: unpack() has a
# stack limit.
WRITE = (
    LEASE_CHECK
    + """
if ARGV[1] ~= '' and lease_lost(KEYS[3], ARGV[1], ARGV[2]) then return 0 end
for i = 3, #ARGV, 3 do
  local op, a, b = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if op == 'S' then
    redis.call('HSET', KEYS[1], a, b)
    redis.call('ZADD', KEYS[2], 0, a)
  elseif op == 'D' then
    redis.call('HDEL', KEYS[1], a)
    redis.call('ZREM', KEYS[2], a)
  else
    while true do
      local doomed = redis.call('ZRANGEBYLEX', KEYS[2], a, b, 'LIMIT', 0, 1000)
      if #doomed == 0 then break end
      redis.call('HDEL', KEYS[1], unpack(doomed))
      redis.call('ZREM', KEYS[2], unpack(doomed))
    end
  end
end
return 1
"""
)

# KEYS: kv, ix. ARGV: min, max. Returns key1, value1, key2, value2, ... in byte order.
LIST = """
local keys = redis.call('ZRANGEBYLEX', KEYS[2], ARGV[1], ARGV[2])
local out = {}
for i = 1, #keys, 1000 do
  local chunk = {unpack(keys, i, math.min(i + 999, #keys))}
  local values = redis.call('HMGET', KEYS[1], unpack(chunk))
  for j = 1, #chunk do
    if values[j] then out[#out + 1] = chunk[j]; out[#out + 1] = values[j] end
  end
end
return out
"""

# KEYS: alarms. ARGV: now, expires, limit, owner, lease key head, lease key tail.
CLAIM = """
local function hex(s)
  return (s:gsub('.', function(c) return string.format('%02x', string.byte(c)) end))
end
local now, limit = tonumber(ARGV[1]), tonumber(ARGV[3])
local out, claimed, offset = {}, 0, 0
while claimed < limit do
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES',
                         'LIMIT', offset, 256)
  if #due == 0 then break end
  offset = offset + #due / 2
  for i = 1, #due, 2 do
    local id = due[i]
    local lease = ARGV[5] .. hex(id) .. ARGV[6]
    local exp = redis.call('HGET', lease, 'exp')
    if claimed < limit and ((not exp) or tonumber(exp) <= now) then
      local token = redis.call('HINCRBY', lease, 'token', 1)
      redis.call('HSET', lease, 'owner', ARGV[4], 'exp', ARGV[2])
      out[#out + 1] = id; out[#out + 1] = token; out[#out + 1] = due[i + 1]
      claimed = claimed + 1
    end
  end
end
return out
"""

# KEYS: alarms. ARGV: workflow id, the wake time the claim saw.
SETTLE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""

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

# KEYS: info, all, state set. ARGV: id, name ('' = keep), state, state key head, create-only.
INDEX = """
local named = redis.call('HSETNX', KEYS[1], 'n' .. ARGV[1], ARGV[2])
if named == 0 and ARGV[5] == '1' then return 0 end
local old = redis.call('HGET', KEYS[1], 's' .. ARGV[1])
if old then redis.call('ZREM', ARGV[4] .. old, ARGV[1]) end
redis.call('HSET', KEYS[1], 's' .. ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('ZADD', KEYS[3], 0, ARGV[1])
return 1
"""
