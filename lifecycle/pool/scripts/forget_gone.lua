-- forget_gone: reconcile's removal of what sessions no longer live left behind (outside damage kept their
-- transition from removing it): each member is checked and removed in this one script, so a session that
-- comes back between reconcile's read and this write keeps its entry.
-- KEYS[1] live ZSET  KEYS[2] pinned ZSET  KEYS[3] pinned_tenants ZSET  KEYS[4] trail HASH
-- ARGV[1] what ARGV[2..] are: 'pins' (session ids of the pinned set), 'tenant_pins' ('tenant|session_id' members
-- of pinned_tenants: removed when the session is not pinned), 'trails' (session ids of the trail hash)
-- Returns how many entries were removed.
local kind, removed = ARGV[1], 0
for i = 2, #ARGV do
  local member = ARGV[i]
  if kind == 'tenant_pins' then
    local session_id = string.match(member, '^[^|]*|(.*)$')
    if not session_id or not redis.call('ZSCORE', KEYS[2], session_id) then
      removed = removed + redis.call('ZREM', KEYS[3], member)
    end
  elseif not redis.call('ZSCORE', KEYS[1], member) then
    if kind == 'pins' then
      removed = removed + redis.call('ZREM', KEYS[2], member)
    elseif kind == 'trails' then
      removed = removed + redis.call('HDEL', KEYS[4], member)
    end
  end
end
return removed
