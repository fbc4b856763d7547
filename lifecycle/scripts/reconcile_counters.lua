-- reconcile_counters: recompute the slot counters from the sets and repair them; report the drift.
-- KEYS[1] live ZSET  KEYS[2] reservations ZSET  KEYS[3] slots STRING  KEYS[4] tenant_slots HASH
-- ARGV[1] now_ms  ARGV[2] recount tenants only while the pool holds at most this many sessions
-- ARGV[3] meta bucket key prefix ('{lc}:meta:')  ARGV[4] number of meta buckets
-- The tenant recount reads every meta bucket HASH, ARGV[3] .. 0 to ARGV[3] .. (ARGV[4] - 1): keys built
-- here rather than passed in KEYS (16,384 of them), all under the same hash tag, so on one cluster slot.
-- Returns {expired reservations purged, pool drift (counter - truth), tenant drift (sum of |differences|)
-- or -1 when the pool was too large to recount tenants in one step}.
local now = tonumber(ARGV[1])
local purged = purge_reservations(KEYS[2], KEYS[3], KEYS[4], now, -1)

local truth = redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2])
local counter = tonumber(redis.call('GET', KEYS[3]) or '0')
redis.call('SET', KEYS[3], truth)

local tenant_drift = -1
if redis.call('ZCARD', KEYS[1]) <= tonumber(ARGV[2]) then
  local counts = {}
  for bucket = 0, tonumber(ARGV[4]) - 1 do
    for _, record in ipairs(redis.call('HVALS', ARGV[3] .. bucket)) do
      local tenant = unpack_meta(record).tenant
      if tenant ~= '' then counts[tenant] = (counts[tenant] or 0) + 1 end
    end
  end
  for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    local tenant = reservation_tenant(member)
    if tenant ~= '' then counts[tenant] = (counts[tenant] or 0) + 1 end
  end
  tenant_drift = 0
  local stored = redis.call('HGETALL', KEYS[4])
  for i = 1, #stored, 2 do
    local tenant, n = stored[i], tonumber(stored[i + 1])
    tenant_drift = tenant_drift + math.abs(n - (counts[tenant] or 0))
    if not counts[tenant] then redis.call('HDEL', KEYS[4], tenant) end
  end
  for tenant, n in pairs(counts) do
    if not redis.call('HEXISTS', KEYS[4], tenant) then tenant_drift = tenant_drift + n end
    redis.call('HSET', KEYS[4], tenant, n)
  end
end
return {purged, counter - truth, tenant_drift}
