-- reserve_slot: admit a reservation only while the pool (and its tenant) is under cap.
-- KEYS[1] slots STRING  KEYS[2] tenants ZSET (the tenant index)  KEYS[3] reservations ZSET  KEYS[4] live ZSET
-- KEYS[5] generation STRING: absent, the pool was never initialised or Redis lost it (fail closed)
-- KEYS[6] verified STRING: the replication id the pool was verified on; another one, Redis restarted or failed
-- over since, and may have lost writes (fail closed until verified)
-- ARGV[1] member 'token|owner|tenant'  ARGV[2] tenant ('' none)  ARGV[3] cap  ARGV[4] tenant cap (0 none)
-- ARGV[5] now_ms  ARGV[6] lease expiry ms  ARGV[7] max expired reservations to purge when full
-- Returns {1, lease_ms} if reserved (or already held by this token: a resend takes no second slot),
-- {0, scope, live, reserved, cap} at capacity, scope 'pool' or 'tenant', or {0, 'tenants_unknown'} when
-- the tenant index was lost and a capped tenant cannot be counted until reconciliation rebuilds it, or
-- {0, 'uninitialised'} when the pool has no generation marker (the client initialises it, or finds it lost),
-- {0, 'unverified'} when Redis restarted or failed over since the pool was verified (the same).
local k = {slots = KEYS[1], tenants = KEYS[2], reservations = KEYS[3], live = KEYS[4]}
local member, tenant = ARGV[1], ARGV[2]
local cap, tenant_cap, now, limit = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[7])

if redis.call('EXISTS', KEYS[5]) == 0 then
  return {0, 'uninitialised'}
end
local verified = redis.call('GET', KEYS[6])
if not verified then
  -- A pool from before verification existed (marker and verified are written together since, and replicated
  -- together): it adopts this server's history, as the upgraded version's first reservation.
  redis.call('SET', KEYS[6], replication_id())
elseif verified ~= replication_id() then
  return {0, 'unverified'}
end
local held = redis.call('ZSCORE', k.reservations, member)
if held then
  return {1, held}
end

-- An empty pool is the one moment a missing counter can be created without a recount, and the tenant index
-- marked complete: nothing can be missing from either. Otherwise they are reconcile's to rebuild.
local counter, truth = counter_value(k), pool_truth(k)
if truth == 0 then
  if not counter and not redis.call('GET', k.slots) then
    redis.call('SET', k.slots, 0)
    counter = 0
  end
  redis.call('ZADD', k.tenants, 'NX', 0, TENANTS_KNOWN)
end
local used = math.max(counter or 0, truth)
-- Only a full pool needs the slots of expired reservations (a crashed creator's) back right now;
-- otherwise reconciliation purges them. This keeps the common path short.
if used >= cap and purge_reservations(k, now, limit) > 0 then
  used = pool_used(k)
end
if used >= cap then
  return {0, 'pool', redis.call('ZCARD', k.live), redis.call('ZCARD', k.reservations), cap}
end
if tenant ~= '' and tenant_cap > 0 then
  if not redis.call('ZSCORE', k.tenants, TENANTS_KNOWN) then
    return {0, 'tenants_unknown'}
  end
  local tenant_used = tenant_count(k.tenants, tenant)
  if tenant_used >= tenant_cap and purge_reservations(k, now, limit) > 0 then
    tenant_used = tenant_count(k.tenants, tenant)
  end
  if tenant_used >= tenant_cap then
    local tenant_reserved = 0
    for _, other in ipairs(redis.call('ZRANGEBYLEX', k.tenants, '[' .. tenant .. '|', '(' .. tenant .. '}')) do
      if string.find(other, '|', #tenant + 2, true) then tenant_reserved = tenant_reserved + 1 end
    end
    return {0, 'tenant', tenant_used - tenant_reserved, tenant_reserved, tenant_cap}
  end
end

if counter then redis.call('INCR', k.slots) end
redis.call('ZADD', k.reservations, ARGV[6], member)
if tenant ~= '' then
  redis.call('ZADD', k.tenants, 0, tenant_member(tenant, member))
end
return {1, ARGV[6]}
