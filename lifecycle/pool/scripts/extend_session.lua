-- extend_session: move a live session's hard deadline forward, never past max_ttl_s from its creation.
-- KEYS[1] live ZSET  KEYS[2] deadline ZSET  KEYS[3] reaping ZSET  KEYS[4] meta bucket HASH  KEYS[5] busy ZSET
-- KEYS[6] pinned ZSET
-- ARGV[1] session_id  ARGV[2] now_ms  ARGV[3] ttl_ms (the deadline wanted: now + ttl)
-- ARGV[4] max_ttl_ms of the global policy (a profile not listed after it has it)  ARGV[5] the caller's tenure
-- ('' none)  ARGV[6], ARGV[7], ... pairs of profile, its max_ttl_ms
-- Returns {1, record, last_active, expires_at, busy lease ('0': none), pinned (0 or 1)} (expires_at: the deadline now; it never moves back, and stays
-- where it was when the cap leaves no room), {-1} not live, {-2} being reaped, {-3} past its hard deadline,
-- {-4} its record or deadline is missing or malformed (outside damage), {-7} the caller's tenure is stale. Nothing is written unless it returns 1.
local session_id, now = ARGV[1], tonumber(ARGV[2])
local refused, last_active, deadline = refusal(KEYS[1], KEYS[2], KEYS[3], session_id, now)
if refused then
  return {refused}
end
local record = redis.call('HGET', KEYS[4], session_id)
local meta = unpack_meta(record)
if not meta or not deadline then
  return {-4}
end
if stale(meta, ARGV[5]) then
  return {-7}
end
local max_ttl = tonumber(ARGV[4])
for i = 6, #ARGV - 1, 2 do
  if ARGV[i] == meta.profile then max_ttl = tonumber(ARGV[i + 1]) end
end
local wanted = math.min(now + tonumber(ARGV[3]), tonumber(meta.created) + max_ttl)
if wanted > tonumber(deadline) then
  redis.call('ZADD', KEYS[2], wanted, session_id)
  deadline = string.format('%d', wanted)
end
return {1, record, last_active, deadline, redis.call('ZSCORE', KEYS[5], session_id) or '0',
        redis.call('ZSCORE', KEYS[6], session_id) and 1 or 0}
