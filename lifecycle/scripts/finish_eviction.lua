-- finish_eviction: the last step of an eviction, checked against its fencing token: the session leaves
-- the pool, its slot comes back, and its owner gets a notice.
-- KEYS[1] live ZSET  KEYS[2] deadline ZSET  KEYS[3] busy ZSET  KEYS[4] turns HASH  KEYS[5] meta bucket HASH
-- KEYS[6] reaping ZSET  KEYS[7] claims HASH  KEYS[8] slots STRING  KEYS[9] tenant_slots HASH
-- KEYS[10] the owner's inbox STREAM
-- ARGV[1] session_id  ARGV[2] token  ARGV[3] now_ms  ARGV[4] notice kind (evicted | expired)
-- ARGV[5] reason  ARGV[6] inbox maxlen
-- Returns 1 finished, 0 the claim is no longer this token's (a stale worker: nothing changed).
local session_id, token = ARGV[1], ARGV[2]
local claim = redis.call('HGET', KEYS[7], session_id)
if not claim or string.match(claim, '^(%d+)|') ~= token then
  return 0
end
redis.call('ZREM', KEYS[6], session_id)
redis.call('HDEL', KEYS[7], session_id)
local record = redis.call('HGET', KEYS[5], session_id)
if record and redis.call('ZSCORE', KEYS[1], session_id) then
  local k = {live = KEYS[1], deadline = KEYS[2], busy = KEYS[3], turns = KEYS[4], meta = KEYS[5],
             slots = KEYS[8], tenant_slots = KEYS[9]}
  drop_session(k, session_id, unpack_meta(record).tenant)
end
redis.call('XADD', KEYS[10], 'MAXLEN', '~', ARGV[6], '*',
           'kind', ARGV[4], 'session_id', session_id, 'reason', ARGV[5], 'at_ms', ARGV[3])
return 1
