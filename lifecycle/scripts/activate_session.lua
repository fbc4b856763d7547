-- activate_session: turn a held reservation into a live session; its slot moves with it.
-- KEYS[1] reservations ZSET  KEYS[2] reservation_info HASH  KEYS[3] live ZSET  KEYS[4] deadline ZSET
-- KEYS[5] meta HASH  KEYS[6] slots STRING  KEYS[7] tenant_slots HASH  KEYS[8] cleaning ZSET
-- ARGV[1] token  ARGV[2] session_id  ARGV[3] profile ('' none)  ARGV[4] now_ms  ARGV[5] expires_at_ms
-- ARGV[6] owner of the reservation
-- Returns {1, record, last_active, expires_at} activated, {2, record, last_active, expires_at} when this
-- reservation's owner already activated it (a resent call), {-1} reservation lost, {-2} session id taken,
-- {-3} a cleaner is removing the session's worktree right now (retry shortly).
local token, session_id, now = ARGV[1], ARGV[2], tonumber(ARGV[4])
local lease = redis.call('ZSCORE', KEYS[1], token)
local info = redis.call('HGET', KEYS[2], token)

local current = redis.call('HGET', KEYS[5], session_id)
if current then
  if not lease and unpack_meta(current).owner == ARGV[6] then
    return {2, current, redis.call('ZSCORE', KEYS[3], session_id), redis.call('ZSCORE', KEYS[4], session_id)}
  end
  return {-2}
end
if not lease then
  return {-1}
end
local cleaning = redis.call('ZSCORE', KEYS[8], session_id)
if cleaning and tonumber(cleaning) > now then
  return {-3}
end
local owner, tenant = string.match(info or '|', '^([^|]*)|(.*)$')
redis.call('ZREM', KEYS[1], token)
redis.call('HDEL', KEYS[2], token)
if tonumber(lease) <= now then
  give_back(KEYS[6], KEYS[7], tenant)
  return {-1}
end

local record = pack_meta({owner = owner, tenant = tenant, profile = ARGV[3], created = ARGV[4], seq = 0})
redis.call('ZADD', KEYS[3], now, session_id)
redis.call('ZADD', KEYS[4], ARGV[5], session_id)
redis.call('HSET', KEYS[5], session_id, record)
return {1, record, ARGV[4], ARGV[5]}
