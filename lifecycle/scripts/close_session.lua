-- close_session: end a live session at its app's request and give its slot back.
-- KEYS[1] live ZSET  KEYS[2] deadline ZSET  KEYS[3] busy ZSET  KEYS[4] turns HASH  KEYS[5] meta bucket HASH
-- KEYS[6] reaping ZSET  KEYS[7] slots STRING  KEYS[8] tenant_slots HASH
-- ARGV[1] session_id
-- Returns {1, record, last_active, expires_at} closed, {0} not live, {-2} being reaped (retry, then it is resumable).
local session_id = ARGV[1]
if redis.call('ZSCORE', KEYS[6], session_id) then
  return {-2}
end
local record = redis.call('HGET', KEYS[5], session_id)
if not record or not redis.call('ZSCORE', KEYS[1], session_id) then
  return {0}
end
local k = {live = KEYS[1], deadline = KEYS[2], busy = KEYS[3], turns = KEYS[4], meta = KEYS[5],
           slots = KEYS[7], tenant_slots = KEYS[8]}
local last_active, expires_at = redis.call('ZSCORE', KEYS[1], session_id), redis.call('ZSCORE', KEYS[2], session_id)
drop_session(k, session_id, unpack_meta(record).tenant)
return {1, record, last_active, expires_at}
