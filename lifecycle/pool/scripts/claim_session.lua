-- claim_session: mark a session REAPING for one eviction, with a fresh fencing token, if it is still due.
-- KEYS[1] live ZSET  KEYS[2] deadline ZSET  KEYS[3] busy ZSET  KEYS[4] reaping ZSET  KEYS[5] claims HASH
-- KEYS[6] meta bucket HASH  KEYS[7] epoch STRING  KEYS[8] replicas ZSET  KEYS[9] turns HASH  KEYS[10] pinned ZSET
-- KEYS[11] trail HASH  KEYS[12] generation STRING  KEYS[13] verified STRING
-- ARGV[1] session_id  ARGV[2] reason (idle | lru | make_room | owner_lost | expired)  ARGV[3] now_ms
-- ARGV[4] claim lease expiry ms  ARGV[5] reason's bound: idle/make_room: latest last_active that is due;
-- lru: the soft cap max_live; owner_lost: the lost owner  ARGV[6] lru: last_active the sweep observed
-- Returns {1, token, record, last_active, expires_at, turn_started, trail} claimed (turn_started: when the turn
-- in flight began, one the hard deadline cut or a lapsed one a dead replica never ended; '0' unknown, '-1'
-- none; trail: the session's packed trail, '' none, for the durable write), or {0, why} with why one of
-- not_live, claimed, busy, pinned (idle, lru, make_room), not_due, expired (left to the expiry path), moved (touched
-- since observed),
-- damaged (its record or deadline is missing or malformed: reconcile repairs it), bad_reason, unverified (the pool
-- is not verified on this server: Redis restarted or failed over and may have lost the turns this session
-- finished, or its eviction and restore; only its hard deadline ends it until the rebuild).

local session_id, reason, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local last_active = redis.call('ZSCORE', KEYS[1], session_id)
local record = redis.call('HGET', KEYS[6], session_id)
if not last_active then
  return {0, 'not_live'}
end
if redis.call('ZSCORE', KEYS[4], session_id) then
  return {0, 'claimed'}
end
local meta = unpack_meta(record)
local expires_at = redis.call('ZSCORE', KEYS[2], session_id)
if not meta or not expires_at then
  return {0, 'damaged'}
end
local expired = tonumber(expires_at) <= now
if reason == 'expired' then
  if not expired then return {0, 'not_due'} end
else
  -- Only the hard deadline ends a busy session: every other reason yields to a current busy lease.
  if expired then return {0, 'expired'} end
  local busy = redis.call('ZSCORE', KEYS[3], session_id)
  if busy and tonumber(busy) > now then return {0, 'busy'} end
  -- The turns' own leases too: a busy entry lost to outside damage must not expose a turn in flight.
  local leases = read_leases(KEYS[9], session_id, now)
  if next(leases) ~= nil then return {0, 'busy'} end
  if reason ~= 'owner_lost' and redis.call('ZSCORE', KEYS[10], session_id) then return {0, 'pinned'} end
  if reason == 'idle' or reason == 'make_room' then
    if tonumber(last_active) > tonumber(ARGV[5]) then return {0, 'not_due'} end
  elseif reason == 'lru' then
    if redis.call('ZCARD', KEYS[1]) - redis.call('ZCARD', KEYS[4]) <= tonumber(ARGV[5]) then return {0, 'not_due'} end
    if tonumber(last_active) ~= tonumber(ARGV[6]) then return {0, 'moved'} end
  elseif reason == 'owner_lost' then
    if meta.owner ~= ARGV[5] then return {0, 'not_due'} end
    local heartbeat = redis.call('ZSCORE', KEYS[8], ARGV[5])
    if heartbeat and tonumber(heartbeat) > now then return {0, 'not_due'} end
  else
    return {0, 'bad_reason'}
  end
  if not verified_here(KEYS[12], KEYS[13]) then return {0, 'unverified'} end
end
local token = fresh_token(KEYS[7])
redis.call('ZADD', KEYS[4], ARGV[4], session_id)
redis.call('HSET', KEYS[5], session_id, token .. '|' .. reason .. '|' .. string.format('%d', meta.seq))
return {1, token, record, last_active, expires_at, turn_in_flight(KEYS[9], session_id) or '-1',
        redis.call('HGET', KEYS[11], session_id) or ''}
