-- reserve_slot: admit a reservation only while the pool (and its tenant) is under cap.
-- KEYS[1] slots STRING  KEYS[2] tenant_slots HASH  KEYS[3] reservations ZSET  KEYS[4] live ZSET
-- ARGV[1] member 'token|owner|tenant'  ARGV[2] tenant ('' none)  ARGV[3] cap  ARGV[4] tenant cap (0 none)
-- ARGV[5] now_ms  ARGV[6] lease expiry ms  ARGV[7] max expired reservations to purge when full
-- Returns {1, lease_ms} if reserved (or already held by this token: a resend takes no second slot),
-- {0, scope, live, reserved, cap} at capacity, scope 'pool' or 'tenant'.
local member, tenant = ARGV[1], ARGV[2]
local cap, tenant_cap, now, limit = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[7])

local held = redis.call('ZSCORE', KEYS[3], member)
if held then
  return {1, held}
end

-- The counter is authoritative; a missing one (a flushed key) is recounted from the sets, so the pool
-- cannot overshoot before reconciliation repairs it.
local counter = redis.call('GET', KEYS[1])
local used = tonumber(counter or (redis.call('ZCARD', KEYS[4]) + redis.call('ZCARD', KEYS[3])))
if counter == false then redis.call('SET', KEYS[1], used) end
-- Only a full pool needs the slots of expired reservations (a crashed creator's) back right now;
-- otherwise reconciliation purges them. This keeps the common path short.
if used >= cap and purge_reservations(KEYS[3], KEYS[1], KEYS[2], now, limit) > 0 then
  used = tonumber(redis.call('GET', KEYS[1]))
end
if used >= cap then
  return {0, 'pool', redis.call('ZCARD', KEYS[4]), redis.call('ZCARD', KEYS[3]), cap}
end
if tenant ~= '' and tenant_cap > 0 then
  local tenant_used = tonumber(redis.call('HGET', KEYS[2], tenant) or '0')
  if tenant_used >= tenant_cap and purge_reservations(KEYS[3], KEYS[1], KEYS[2], now, limit) > 0 then
    tenant_used = tonumber(redis.call('HGET', KEYS[2], tenant) or '0')
  end
  if tenant_used >= tenant_cap then
    local tenant_reserved = 0
    for _, other in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
      if reservation_tenant(other) == tenant then tenant_reserved = tenant_reserved + 1 end
    end
    return {0, 'tenant', tenant_used - tenant_reserved, tenant_reserved, tenant_cap}
  end
end

redis.call('INCR', KEYS[1])
if tenant ~= '' then
  redis.call('HINCRBY', KEYS[2], tenant, 1)
end
redis.call('ZADD', KEYS[3], ARGV[6], member)
return {1, ARGV[6]}
