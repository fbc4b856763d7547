-- reconcile_counters: purge expired reservations, index the tenants of reservations, and repair the slot
-- counter from the sets; report what was wrong. Runs after the paged repairs of the sessions themselves.
-- KEYS[1] live ZSET  KEYS[2] reservations ZSET  KEYS[3] slots STRING  KEYS[4] tenants ZSET
-- ARGV[1] now_ms  ARGV[2] the member ('#rebuild:<nonce>') the paged passes put in the tenant index when they
-- started: if it is still there, nothing deleted the index meanwhile and it is marked known ('#')
-- Returns {expired reservations purged, counter before the repair (-1: it was missing), truth,
-- reservation tenant members that were missing, 1 if the tenant index was marked known by this call}.
local k = {live = KEYS[1], reservations = KEYS[2], slots = KEYS[3], tenants = KEYS[4]}
local purged = purge_reservations(k, tonumber(ARGV[1]), -1)
local added = 0
for _, member in ipairs(redis.call('ZRANGE', k.reservations, 0, -1)) do
  local tenant = reservation_tenant(member)
  if tenant ~= '' then added = added + redis.call('ZADD', k.tenants, 0, tenant_member(tenant, member)) end
end
local truth = pool_truth(k)
local counter = tonumber(redis.call('GET', k.slots) or '-1') or -1
redis.call('SET', k.slots, truth)
local marked = 0
if redis.call('ZREM', k.tenants, ARGV[2]) == 1 then
  marked = redis.call('ZADD', k.tenants, 0, TENANTS_KNOWN)
end
return {purged, counter, truth, added, marked}
