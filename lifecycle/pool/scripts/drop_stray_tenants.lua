-- drop_stray_tenants: one page of reconciliation over the tenant index: drop members that no live session
-- or held reservation backs (a hand edit, a lost key). A member whose session has no readable record is
-- kept: counting one slot too many refuses early, counting one too few could overshoot a tenant's cap.
-- KEYS[1] live ZSET  KEYS[2] reservations ZSET  KEYS[3] tenants ZSET  KEYS[3 + i] meta bucket of member i
-- ARGV members of the tenant index (the bucket of a reservation member is any key: it is not read)
-- Returns how many members were dropped.
local dropped = 0
for i, member in ipairs(ARGV) do
  local tenant, rest = string.match(member, '^([^|]+)|(.+)$')
  local backed = true
  if not tenant then
    backed = string.sub(member, 1, 1) == '#'  -- the index's own markers
  elseif string.find(rest, '|', 1, true) then
    backed = redis.call('ZSCORE', KEYS[2], rest) ~= false and reservation_tenant(rest) == tenant
  elseif not redis.call('ZSCORE', KEYS[1], rest) then
    backed = false
  else
    local meta = unpack_meta(redis.call('HGET', KEYS[3 + i], rest))
    backed = meta == nil or meta.tenant == tenant
  end
  if not backed then
    dropped = dropped + redis.call('ZREM', KEYS[3], member)
  end
end
return dropped
