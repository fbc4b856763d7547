-- rebuild_records: give live sessions whose record is gone a stand-in record: no owner, tenant or profile
-- known, created now, and a turn sequence one past anything MongoDB holds for them, so no checkpoint taken
-- before the damage covers them: each must checkpoint again before it can be evicted as resumable.
-- KEYS[1] live ZSET  KEYS[2] deadline ZSET  KEYS[2 + i] the meta bucket HASH of the i-th session
-- ARGV[1] now_ms  ARGV[2] default max TTL ms  ARGV[1 + 2i] session_id  ARGV[2 + 2i] its turn sequence
-- Returns how many records were rebuilt (a session that left the pool or got a record meanwhile is skipped).
local now = tonumber(ARGV[1])
local rebuilt = 0
for i = 1, #KEYS - 2 do
  local session_id, seq = ARGV[1 + 2 * i], tonumber(ARGV[2 + 2 * i])
  if redis.call('ZSCORE', KEYS[1], session_id) and redis.call('HEXISTS', KEYS[2 + i], session_id) == 0 then
    redis.call('HSET', KEYS[2 + i], session_id, pack_meta({owner = '', tenant = '', profile = '', created = ARGV[1],
                                                           seq = seq}))
    redis.call('ZADD', KEYS[2], 'NX', now + tonumber(ARGV[2]), session_id)
    rebuilt = rebuilt + 1
  end
end
return rebuilt
