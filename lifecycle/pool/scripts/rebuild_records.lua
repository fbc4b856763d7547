-- rebuild_records: give live sessions whose record is gone (or unreadable: a hand edit) a stand-in record:
-- the tenant the tenant index still files them under ('?' when that was lost too: it then counts against
-- every capped tenant), no owner or profile known, created now, and a turn sequence one past anything
-- MongoDB holds for them, so no checkpoint taken before the damage covers them: each must checkpoint again
-- before it can be evicted as resumable. With no profile, the global idle timeout now judges it: the idle
-- sweep's recheck set gets it, since that timeout's cursor may already be past its activity.
-- KEYS[1] live ZSET  KEYS[2] deadline ZSET  KEYS[3] tenants ZSET  KEYS[4] idle recheck ZSET
-- KEYS[4 + i] the meta bucket of session i
-- ARGV[1] now_ms  ARGV[2] default max TTL ms  then per session i: ARGV[3i] session_id, ARGV[3i + 1] its
-- turn sequence, ARGV[3i + 2] its tenant ('' none)
-- Returns how many records were rebuilt (a session that left the pool or got a readable record meanwhile,
-- or whose bucket is not a hash, is skipped).
local now = tonumber(ARGV[1])
local recheck_type = redis.call('TYPE', KEYS[4]).ok  -- another (a hand edit): the idle sweep starts over anyway
local recheck = recheck_type == 'zset' or recheck_type == 'none'
local rebuilt = 0
for i = 1, #KEYS - 4 do
  local session_id, seq, tenant = ARGV[3 * i], tonumber(ARGV[3 * i + 1]), ARGV[3 * i + 2]
  local bucket_ok = redis.call('EXISTS', KEYS[4 + i]) == 0 or redis.call('TYPE', KEYS[4 + i]).ok == 'hash'
  if bucket_ok and redis.call('ZSCORE', KEYS[1], session_id)
      and not unpack_meta(redis.call('HGET', KEYS[4 + i], session_id)) then
    local record = pack_meta({owner = '', tenant = tenant, profile = '', created = ARGV[1], seq = seq})
    redis.call('HSET', KEYS[4 + i], session_id, record)
    redis.call('ZADD', KEYS[2], 'NX', now + tonumber(ARGV[2]), session_id)
    if recheck then redis.call('ZADD', KEYS[4], now, session_id) end
    if tenant ~= '' then
      redis.call('ZADD', KEYS[3], 'NX', 0, tenant_member(tenant, session_id))
    end
    rebuilt = rebuilt + 1
  end
end
return rebuilt
