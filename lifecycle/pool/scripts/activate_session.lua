-- activate_session: turn a held reservation into a live session; its slot moves with it.
-- KEYS[1] reservations ZSET  KEYS[2] live ZSET  KEYS[3] deadline ZSET  KEYS[4] meta bucket HASH
-- KEYS[5] slots STRING  KEYS[6] tenants ZSET  KEYS[7] cleaning ZSET  KEYS[8] reaping ZSET
-- KEYS[9] unsaved ZSET (checkpoint requests: one left from before an eviction or a close is not this life's)
-- KEYS[10] closed ZSET (a recent close of an earlier life must not keep a rebuild from readmitting this one)
-- KEYS[11] epoch STRING: this life's tenure is a fresh fencing token, kept in the record (see stale)
-- ARGV[1] reservation member 'token|owner|tenant'  ARGV[2] session_id  ARGV[3] profile ('' none)
-- ARGV[4] now_ms  ARGV[5] expires_at_ms  ARGV[6] turn_seq to start from (a restored session goes on from
-- its durable sequence, so no checkpoint taken before the restore can cover a turn after it)
-- ARGV[7] created_ms (a restored session keeps its creation time)  ARGV[8] the trail's source ('' trail off)
-- Returns {1, record, last_active, expires_at} activated, {2, record, last_active, expires_at} when this
-- reservation's owner already activated it (a resent call: the same tenure), {-1} reservation lost, {-2} session id taken,
-- {-3} a cleaner is removing the session's worktree right now (retry shortly).
local k = {reservations = KEYS[1], live = KEYS[2], deadline = KEYS[3], meta = KEYS[4], slots = KEYS[5],
           tenants = KEYS[6]}
local member, session_id, now = ARGV[1], ARGV[2], tonumber(ARGV[4])
local owner, tenant = string.match(member, '^[^|]*|([^|]*)|(.*)$')
local lease = redis.call('ZSCORE', k.reservations, member)

local current = redis.call('HGET', k.meta, session_id)
if current then
  local meta = unpack_meta(current)
  if not lease and meta and meta.owner == owner then
    return {2, current, redis.call('ZSCORE', k.live, session_id), redis.call('ZSCORE', k.deadline, session_id)}
  end
  return {-2}
end
-- Live or being evicted without a readable record (outside damage): still taken, never taken over.
if redis.call('ZSCORE', k.live, session_id) or redis.call('ZSCORE', KEYS[8], session_id) then
  return {-2}
end
if not lease then
  return {-1}
end
local cleaning = redis.call('ZSCORE', KEYS[7], session_id)
if cleaning and tonumber(cleaning) > now then
  return {-3}
end
redis.call('ZREM', k.reservations, member)
if tonumber(lease) <= now then
  give_back(k, tenant, member)
  return {-1}
end

local record = pack_meta({owner = owner, tenant = tenant, profile = ARGV[3], created = ARGV[7], seq = tonumber(ARGV[6]),
                          tenure = string.format('%d', fresh_token(KEYS[11]))})
redis.call('ZADD', k.live, now, session_id)
redis.call('ZADD', k.deadline, ARGV[5], session_id)
redis.call('HSET', k.meta, session_id, record)
index_owner(k, owner, session_id)
stamp_source(k, session_id, ARGV[8])
redis.call('ZREM', KEYS[9], session_id)
redis.call('ZREM', KEYS[10], session_id)
if tenant ~= '' then
  redis.call('ZREM', k.tenants, tenant_member(tenant, member))
  redis.call('ZADD', k.tenants, 0, tenant_member(tenant, session_id))
end
return {1, record, ARGV[4], ARGV[5]}
