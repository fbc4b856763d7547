-- reconcile_counters: recompute the slot counters from the sets and repair them; report the drift.
-- KEYS[1] live ZSET  KEYS[2] reservations ZSET  KEYS[3] reservation_info HASH  KEYS[4] slots STRING
-- KEYS[5] tenant_slots HASH  KEYS[6] meta HASH
-- ARGV[1] now_ms  ARGV[2] recount tenants only while the pool holds at most this many sessions
-- Returns {expired reservations purged, pool drift (counter - truth), tenant drift (sum of |differences|)
-- or -1 when the pool was too large to recount tenants in one step}.
local now = tonumber(ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, token in ipairs(expired) do
  local info = redis.call('HGET', KEYS[3], token) or '|'
  redis.call('ZREM', KEYS[2], token)
  redis.call('HDEL', KEYS[3], token)
  give_back(KEYS[4], KEYS[5], string.match(info, '|(.*)$'))
end
-- Reservation details whose reservation is gone (a hand edit) are dropped.
for _, token in ipairs(redis.call('HKEYS', KEYS[3])) do
  if not redis.call('ZSCORE', KEYS[2], token) then redis.call('HDEL', KEYS[3], token) end
end

local truth = redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2])
local counter = tonumber(redis.call('GET', KEYS[4]) or '0')
redis.call('SET', KEYS[4], truth)

local tenant_drift = -1
if redis.call('HLEN', KEYS[6]) <= tonumber(ARGV[2]) then
  local counts = {}
  for _, record in ipairs(redis.call('HVALS', KEYS[6])) do
    local tenant = unpack_meta(record).tenant
    if tenant ~= '' then counts[tenant] = (counts[tenant] or 0) + 1 end
  end
  for _, info in ipairs(redis.call('HVALS', KEYS[3])) do
    local tenant = string.match(info, '|(.*)$')
    if tenant ~= '' then counts[tenant] = (counts[tenant] or 0) + 1 end
  end
  tenant_drift = 0
  local stored = redis.call('HGETALL', KEYS[5])
  for i = 1, #stored, 2 do
    local tenant, n = stored[i], tonumber(stored[i + 1])
    tenant_drift = tenant_drift + math.abs(n - (counts[tenant] or 0))
    if not counts[tenant] then redis.call('HDEL', KEYS[5], tenant) end
  end
  for tenant, n in pairs(counts) do
    if not redis.call('HEXISTS', KEYS[5], tenant) then tenant_drift = tenant_drift + n end
    redis.call('HSET', KEYS[5], tenant, n)
  end
end
return {#expired, counter - truth, tenant_drift}
