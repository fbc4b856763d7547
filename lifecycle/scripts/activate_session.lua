-- activate_session: turn a held reservation into a live session; its slot moves with it.
-- KEYS[1] reservations ZSET  KEYS[2] live ZSET  KEYS[3] deadline ZSET  KEYS[4] meta bucket HASH
-- KEYS[5] slots STRING  KEYS[6] tenant_slots HASH  KEYS[7] cleaning ZSET
-- ARGV[1] reservation member 'token|owner|tenant'  ARGV[2] session_id  ARGV[3] profile ('' none)
-- ARGV[4] now_ms  ARGV[5] expires_at_ms
-- Returns {1, record, last_active, expires_at} activated, {2, record, last_active, expires_at} when this
-- reservation's owner already activated it (a resent call), {-1} reservation lost, {-2} session id taken,
-- {-3} a cleaner is removing the session's worktree right now (retry shortly).
local member, session_id, now = ARGV[1], ARGV[2], tonumber(ARGV[4])
local owner, tenant = string.match(member, '^[^|]*|([^|]*)|(.*)$')
local lease = redis.call('ZSCORE', KEYS[1], member)

local current = redis.call('HGET', KEYS[4], session_id)
if current then
  if not lease and unpack_meta(current).owner == owner then
    return {2, current, redis.call('ZSCORE', KEYS[2], session_id), redis.call('ZSCORE', KEYS[3], session_id)}
  end
  return {-2}
end
if not lease then
  return {-1}
end
local cleaning = redis.call('ZSCORE', KEYS[7], session_id)
if cleaning and tonumber(cleaning) > now then
  return {-3}
end
redis.call('ZREM', KEYS[1], member)
if tonumber(lease) <= now then
  give_back(KEYS[5], KEYS[6], tenant)
  return {-1}
end

local record = pack_meta({owner = owner, tenant = tenant, profile = ARGV[3], created = ARGV[4], seq = 0})
redis.call('ZADD', KEYS[2], now, session_id)
redis.call('ZADD', KEYS[3], ARGV[5], session_id)
redis.call('HSET', KEYS[4], session_id, record)
return {1, record, ARGV[4], ARGV[5]}
