-- unpin_session: idle and LRU eviction may take the session again (the next idle sweep judges it: a pinned
-- session stays in the idle recheck set while it is past its timeout).
-- KEYS[1] meta bucket HASH  KEYS[2] pinned ZSET  KEYS[3] pinned_tenants ZSET
-- ARGV[1] session_id  ARGV[2] the caller's tenure ('' none)
-- Returns 1 unpinned, 0 it was not pinned, -7 the caller's tenure is stale (see stale): nothing changed.
local session_id = ARGV[1]
local meta = unpack_meta(redis.call('HGET', KEYS[1], session_id))
if meta and stale(meta, ARGV[2]) then
  return -7
end
if meta and meta.tenant ~= '' then
  redis.call('ZREM', KEYS[3], tenant_member(meta.tenant, session_id))
end
return redis.call('ZREM', KEYS[2], session_id)
