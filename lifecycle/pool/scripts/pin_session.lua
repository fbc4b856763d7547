-- pin_session: keep a live session from idle, LRU and make-room eviction (its hard deadline still ends it, and
-- a lost owner's sessions are still recovered), within the pool's and its tenant's pin limits.
-- KEYS[1] live ZSET  KEYS[2] reaping ZSET  KEYS[3] meta bucket HASH  KEYS[4] pinned ZSET
-- KEYS[5] pinned_tenants ZSET (every score 0, 'tenant|session_id': a tenant's pins are one ZLEXCOUNT)
-- KEYS[6] deadline ZSET
-- ARGV[1] session_id  ARGV[2] now_ms  ARGV[3] most pinned sessions in the pool  ARGV[4] most per tenant (0: none)
-- ARGV[5] the caller's tenure ('' none)
-- Returns {1} pinned, {2} it was pinned already, {-1} not live, {-2} being evicted, {-3} past its hard deadline,
-- {-4} its record is missing or malformed (outside damage), {-5, pinned, limit} the pool's limit is reached,
-- {-6, pinned, limit, tenant} its tenant's, {-7} the caller's tenure is stale (see stale).
local session_id = ARGV[1]
local refused = refusal(KEYS[1], KEYS[6], KEYS[2], session_id, tonumber(ARGV[2]))
if refused then
  return {refused}
end
local meta = unpack_meta(redis.call('HGET', KEYS[3], session_id))
if not meta then
  return {-4}
end
if stale(meta, ARGV[5]) then
  return {-7}
end
if redis.call('ZSCORE', KEYS[4], session_id) then
  return {2}
end
local pinned, limit = redis.call('ZCARD', KEYS[4]), tonumber(ARGV[3])
if pinned >= limit then
  return {-5, pinned, limit}
end
local per_tenant = tonumber(ARGV[4])
if meta.tenant ~= '' and per_tenant > 0 then
  local mine = redis.call('ZLEXCOUNT', KEYS[5], '[' .. meta.tenant .. '|', '(' .. meta.tenant .. '}')
  if mine >= per_tenant then
    return {-6, mine, per_tenant, meta.tenant}
  end
end
redis.call('ZADD', KEYS[4], ARGV[2], session_id)
if meta.tenant ~= '' then
  redis.call('ZADD', KEYS[5], 0, tenant_member(meta.tenant, session_id))
end
return {1}
