-- begin_turn: mark a live session busy for one turn, refusing one that is being reaped or is not live.
-- KEYS[1] live ZSET  KEYS[2] deadline ZSET  KEYS[3] reaping ZSET  KEYS[4] busy ZSET  KEYS[5] turns HASH
-- KEYS[6] meta bucket HASH
-- ARGV[1] session_id  ARGV[2] turn token  ARGV[3] now_ms  ARGV[4] busy lease expiry ms
-- ARGV[5] 1: record the turn as the trail's source (the trail is on)  ARGV[6] the caller's tenure ('' none)
-- Returns {1, turn_seq, tenure ('' none)} busy, {-7} the caller's tenure is stale (see stale), {-1} not live, {-2} being reaped, {-3} past its hard deadline, {-4} its record
-- is missing or malformed (outside damage; reconcile repairs it). Nothing is written unless it returns 1.
local session_id, now = ARGV[1], tonumber(ARGV[3])
local refused, _, deadline = refusal(KEYS[1], KEYS[2], KEYS[3], session_id, now)
if refused then
  return {refused}
end
local meta = unpack_meta(redis.call('HGET', KEYS[6], session_id))
if not meta or not deadline then
  return {-4}
end
if stale(meta, ARGV[6]) then
  return {-7}
end
local leases, starts = read_leases(KEYS[5], session_id, now)
leases[ARGV[2]] = tonumber(ARGV[4])
starts[ARGV[2]] = ARGV[3]
write_leases(KEYS[5], KEYS[4], session_id, leases, starts)
redis.call('ZADD', KEYS[1], 'XX', 'GT', now, session_id)
if ARGV[5] == '1' then stamp_source({live = KEYS[1]}, session_id, 'turn@' .. meta.owner) end
return {1, meta.seq, meta.tenure or ''}
