-- readmit_sessions: a pool whose Redis lost its state takes back the sessions MongoDB says are live, as they
-- were activated (owner, tenant, profile, created, hard deadline) and with the turn sequence MongoDB knows,
-- active as of now (their activity was lost with the pool). Each counts against the cap again: the pool may
-- sit over it, and admission refuses until it is under.
-- KEYS[1] live ZSET  KEYS[2] deadline ZSET  KEYS[3] tenants ZSET  KEYS[4] slots STRING  KEYS[5] closed ZSET
-- KEYS[5 + i] the meta bucket of session i
-- ARGV[1] now_ms  then per session i, 9 fields from ARGV[9i - 7]: session_id, owner, tenant ('' none),
-- profile ('' none), created_ms, turn_seq, expires_at_ms, tenure ('' none: recorded before tenures), kept ('1':
-- the pool held this life when the rebuild read it: only its turn sequence moves; one that left since, by its
-- expiry, stays gone)
-- Returns {how many sessions were taken back (one its app closed within the last minute stays closed: MongoDB
-- may not have recorded the close yet), how many kept ones had their turn sequence moved on}. One the pool already holds is left as it is, unless it holds an earlier
-- life of it (a lower tenure: a failover lost its eviction and the restore MongoDB recorded): that life's record
-- is replaced by this one, in place (its slot stays counted), and its turns, pin, checkpoint request and trail go
-- with it. (An eviction claim of it in flight finds its durable write fenced: the rebuild raised the fence.) One it
-- holds of this very life keeps its record, its turn sequence moved one past anything known (not counted). None
-- keeps a checkpoint request from before: its grace would run from a request for turns before the lost ones.
local now = tonumber(ARGV[1])
local k = {live = KEYS[1]}
local taken, moved = 0, 0
for i = 1, #KEYS - 5 do
  local base = 9 * i - 7
  local session_id, tenant = ARGV[base], ARGV[base + 2]
  local tenure = ARGV[base + 7]
  local held = redis.call('HGET', KEYS[5 + i], session_id)
  local live = redis.call('ZSCORE', KEYS[1], session_id)
  local earlier = live and held and unpack_meta(held)
  local superseded = earlier and earlier.tenure and tenure ~= '' and tonumber(earlier.tenure) < tonumber(tenure)
  -- Read as held ('kept'): one that left since (its expiry) stays gone.
  local absent = ARGV[base + 8] ~= '1' and not live and not held and not redis.call('ZSCORE', KEYS[5], session_id)
  if earlier and (not earlier.tenure or tenure == '' or earlier.tenure == tenure) then
    -- This life, held through the loss: the turns it finished since the server's last write it kept were lost
    -- with the rest, so no checkpoint from before may cover it: one past anything either side knows.
    earlier.seq = math.max(earlier.seq + 1, tonumber(ARGV[base + 5]))
    redis.call('HSET', KEYS[5 + i], session_id, pack_meta(earlier))
    moved = moved + 1
  end
  if earlier or absent then
    -- A checkpoint request the server came back with asked for turns before the lost ones (or of an earlier
    -- life): the grace of on_missing_checkpoint must not run from it. The next idle sweep asks again.
    redis.call('ZREM', pool_key(k, 'unsaved'), session_id)
  end
  if superseded then
    forget_life(k, session_id, earlier.tenant, earlier.owner)  -- its slot stays counted: this life takes it
    if earlier.tenant ~= '' then redis.call('ZREM', KEYS[3], tenant_member(earlier.tenant, session_id)) end
  end
  if superseded or absent then
    local record = pack_meta({owner = ARGV[base + 1], tenant = tenant, profile = ARGV[base + 3],
                              created = ARGV[base + 4], seq = tonumber(ARGV[base + 5]),
                              tenure = tenure ~= '' and tenure or nil})
    redis.call('HSET', KEYS[5 + i], session_id, record)
    redis.call('ZADD', KEYS[1], now, session_id)
    index_owner(k, ARGV[base + 1], session_id)
    redis.call('ZADD', KEYS[2], ARGV[base + 6], session_id)
    if tenant ~= '' then
      redis.call('ZADD', KEYS[3], 0, tenant_member(tenant, session_id))
    end
    if absent and redis.call('EXISTS', KEYS[4]) == 1 then
      redis.call('INCR', KEYS[4])
    end
    taken = taken + 1
  end
end
return {taken, moved}
