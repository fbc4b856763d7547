-- close_session: end a live session at its app's request and give its slot back.
-- KEYS[1] live ZSET  KEYS[2] deadline ZSET  KEYS[3] busy ZSET  KEYS[4] turns HASH  KEYS[5] meta bucket HASH
-- KEYS[6] reaping ZSET  KEYS[7] slots STRING  KEYS[8] tenants ZSET  KEYS[9] reservations ZSET
-- KEYS[10] epoch STRING (the fencing tokens)  KEYS[11] closed ZSET (recent closes, for a rebuild to pass over)
-- ARGV[1] session_id  ARGV[2] now_ms  ARGV[3] the caller's tenure ('' none)
-- Returns {1, record, last_active, expires_at, token} closed, with the fencing token of its durable record: drawn
-- here, from the same state that held the session (one drawn by a later call could come from a Redis that lost
-- the pool meanwhile, below the fences MongoDB holds), {0} not live, {-2} being reaped (retry, then it is
-- resumable), {-4} its record is damaged (reconcile repairs it; the session stays as it is meanwhile), {-7} the
-- caller's tenure is stale (see stale): nothing changed.
local k = {live = KEYS[1], deadline = KEYS[2], busy = KEYS[3], turns = KEYS[4], meta = KEYS[5],
           slots = KEYS[7], tenants = KEYS[8], reservations = KEYS[9]}
local session_id = ARGV[1]
if redis.call('ZSCORE', KEYS[6], session_id) then
  return {-2}
end
local last_active = redis.call('ZSCORE', k.live, session_id)
if not last_active then
  return {0}
end
local record = redis.call('HGET', k.meta, session_id)
local meta = unpack_meta(record)
local expires_at = redis.call('ZSCORE', k.deadline, session_id)
if not meta or not expires_at then
  return {-4}
end
if stale(meta, ARGV[3]) then
  return {-7}
end
drop_session(k, session_id, meta.tenant, meta.owner)
-- A rebuild that reads MongoDB before this close is recorded there passes over it (see readmit_sessions).
local now = tonumber(ARGV[2])
redis.call('ZADD', KEYS[11], now, session_id)
redis.call('ZREMRANGEBYSCORE', KEYS[11], '-inf', now - 60000)
return {1, record, last_active, expires_at, fresh_token(KEYS[10])}
