-- renew_turn: extend one turn's busy lease (the heartbeat of a running turn).
-- KEYS[1] live ZSET  KEYS[2] busy ZSET  KEYS[3] turns HASH  KEYS[4] reaping ZSET  KEYS[5] meta bucket HASH
-- ARGV[1] session_id  ARGV[2] turn token  ARGV[3] now_ms  ARGV[4] new lease expiry ms
-- ARGV[5] the tenure the turn began under ('' none)
-- Returns 1 renewed, 2 renewed after the lease had lapsed (the session was not busy for a while),
-- 3 the lease had lapsed and a worker claimed the session meanwhile (not renewed: it is being evicted),
-- 0 the session is no longer live (closed, expired or evicted), or this is another life of it (restored since
-- the turn began: a lapsed turn of an earlier life must never hold the new one busy).
local session_id, token, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
if not redis.call('ZSCORE', KEYS[1], session_id) then
  return 0
end
local meta = unpack_meta(redis.call('HGET', KEYS[5], session_id))
if meta and stale(meta, ARGV[5]) then
  return 0
end
local leases, starts = read_leases(KEYS[3], session_id, now)
local lapsed = leases[token] == nil
-- A claim is only ever taken while no lease is current; a lapsed turn must not sneak back under it.
if lapsed and redis.call('ZSCORE', KEYS[4], session_id) then
  return 3
end
leases[token] = tonumber(ARGV[4])
write_leases(KEYS[3], KEYS[2], session_id, leases, starts)
if lapsed then
  return 2
end
return 1
