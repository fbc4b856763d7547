-- reserve_slot: admit a reservation only while the pool (and its tenant) is under cap.
-- KEYS[1] slots STRING  KEYS[2] tenant_slots HASH  KEYS[3] reservations ZSET
-- KEYS[4] reservation_info HASH  KEYS[5] live ZSET
-- ARGV[1] token  ARGV[2] owner  ARGV[3] tenant ('' none)  ARGV[4] cap  ARGV[5] tenant cap (0 none)
-- ARGV[6] now_ms  ARGV[7] lease expiry ms  ARGV[8] max expired reservations to purge when full
-- Returns {1, lease_ms} if reserved (or already held by this token: a resend takes no second slot),
-- {0, scope, live, reserved, cap} at capacity, scope 'pool' or 'tenant'.
local token, owner, tenant = ARGV[1], ARGV[2], ARGV[3]
local cap, tenant_cap, now = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])

local held = redis.call('ZSCORE', KEYS[3], token)
if held then
  return {1, held}
end

local function purge_expired()
  for _, expired in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, tonumber(ARGV[8]))) do
    local info = redis.call('HGET', KEYS[4], expired) or '|'
    redis.call('ZREM', KEYS[3], expired)
    redis.call('HDEL', KEYS[4], expired)
    give_back(KEYS[1], KEYS[2], string.match(info, '|(.*)$'))
  end
end

-- The counter is authoritative; a missing one (a flushed key) is recounted from the sets, so the pool
-- cannot overshoot before reconciliation repairs it.
local counter = redis.call('GET', KEYS[1])
local used = tonumber(counter or (redis.call('ZCARD', KEYS[5]) + redis.call('ZCARD', KEYS[3])))
if counter == false then redis.call('SET', KEYS[1], used) end
if used >= cap then
  -- Only a full pool needs the slots of expired reservations (a crashed creator's) back right now;
  -- otherwise reconciliation purges them. This keeps the common path short.
  purge_expired()
  used = tonumber(redis.call('GET', KEYS[1]))
end
if used >= cap then
  return {0, 'pool', redis.call('ZCARD', KEYS[5]), redis.call('ZCARD', KEYS[3]), cap}
end
if tenant ~= '' and tenant_cap > 0 then
  local tenant_used = tonumber(redis.call('HGET', KEYS[2], tenant) or '0')
  if tenant_used >= tenant_cap then
    purge_expired()
    tenant_used = tonumber(redis.call('HGET', KEYS[2], tenant) or '0')
  end
  if tenant_used >= tenant_cap then
    local tenant_reserved = 0
    for _, info in ipairs(redis.call('HVALS', KEYS[4])) do
      if string.match(info, '|(.*)$') == tenant then tenant_reserved = tenant_reserved + 1 end
    end
    return {0, 'tenant', tenant_used - tenant_reserved, tenant_reserved, tenant_cap}
  end
end

redis.call('INCR', KEYS[1])
if tenant ~= '' then
  redis.call('HINCRBY', KEYS[2], tenant, 1)
end
redis.call('ZADD', KEYS[3], ARGV[7], token)
redis.call('HSET', KEYS[4], token, owner .. '|' .. tenant)
return {1, ARGV[7]}
