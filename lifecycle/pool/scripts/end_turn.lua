-- end_turn: a turn finished: drop its busy lease, bump the turn sequence, stamp activity.
-- KEYS[1] live ZSET  KEYS[2] busy ZSET  KEYS[3] turns HASH  KEYS[4] meta bucket HASH
-- KEYS[5] unsaved ZSET: a checkpoint request made before this turn was for turns before it; the grace of
-- on_missing_checkpoint for this one starts at the request the next idle sweep makes
-- ARGV[1] session_id  ARGV[2] turn token  ARGV[3] now_ms  ARGV[4] 1: record the turn's end as the trail's source
-- ARGV[5] the tenure the turn began under ('' none)
-- Returns {1, turn_seq} done, {0} the session left the live pool while the turn ran, or was restored since
-- it began (another life: nothing of it is touched), or its record is damaged (the turn's lease is dropped). The sequence is bumped even while an eviction claim is
-- in flight: the claim then sees a turn its durable write does not cover, and is undone.
local session_id, now = ARGV[1], tonumber(ARGV[3])
local live = redis.call('ZSCORE', KEYS[1], session_id)
local meta = unpack_meta(redis.call('HGET', KEYS[4], session_id))
if meta and stale(meta, ARGV[5]) then
  return {0}
end
local leases, starts = read_leases(KEYS[3], session_id, now)
leases[ARGV[2]] = nil
write_leases(KEYS[3], KEYS[2], session_id, leases, starts)
if not live or not meta then
  return {0}
end
meta.seq = meta.seq + 1
redis.call('HSET', KEYS[4], session_id, pack_meta(meta))
redis.call('ZADD', KEYS[1], 'XX', 'GT', now, session_id)
if ARGV[4] == '1' then stamp_source({live = KEYS[1]}, session_id, 'turn_end@' .. meta.owner) end
redis.call('ZREM', KEYS[5], session_id)
return {1, meta.seq}
