-- finish_eviction: the last step of an eviction, checked against its fencing token: the session leaves
-- the pool, its slot comes back, and its owner gets a notice.
-- KEYS[1] live ZSET  KEYS[2] deadline ZSET  KEYS[3] busy ZSET  KEYS[4] turns HASH  KEYS[5] meta bucket HASH
-- KEYS[6] reaping ZSET  KEYS[7] claims HASH  KEYS[8] slots STRING  KEYS[9] tenants ZSET
-- KEYS[10] reservations ZSET  KEYS[11] the owner's inbox STREAM
-- ARGV[1] session_id  ARGV[2] token  ARGV[3] now_ms  ARGV[4] notice kind (evicted | expired)
-- ARGV[5] reason  ARGV[6] inbox maxlen  ARGV[7] tenant ('' none; the claim's, used when the record is damaged)
-- Returns 1 finished, 0 the claim is no longer this token's (a stale worker: nothing changed), -1 a turn
-- finished since the claim (nothing changed: the eviction must be undone).
local k = {live = KEYS[1], deadline = KEYS[2], busy = KEYS[3], turns = KEYS[4], meta = KEYS[5],
           slots = KEYS[8], tenants = KEYS[9], reservations = KEYS[10]}
local session_id = ARGV[1]
local claim = unpack_claim(redis.call('HGET', KEYS[7], session_id))
if not claim or claim.token ~= ARGV[2] then
  return 0
end
local record = redis.call('HGET', k.meta, session_id)
if turn_finished_since(claim, record) then
  return -1
end
redis.call('ZREM', KEYS[6], session_id)
redis.call('HDEL', KEYS[7], session_id)
if redis.call('ZSCORE', k.live, session_id) then
  local meta = unpack_meta(record)
  drop_session(k, session_id, meta and meta.tenant or ARGV[7], meta and meta.owner)
end
redis.call('XADD', KEYS[11], 'MAXLEN', '~', ARGV[6], '*',
           'kind', ARGV[4], 'session_id', session_id, 'reason', ARGV[5], 'at_ms', ARGV[3])
return 1
