-- read_session: everything Redis knows of one session, read atomically; not activity.
-- KEYS[1] live ZSET  KEYS[2] deadline ZSET  KEYS[3] busy ZSET  KEYS[4] meta bucket HASH  KEYS[5] reaping ZSET
-- KEYS[6] pinned ZSET
-- ARGV[1] session_id
-- Returns {record, last_active_ms, expires_at_ms, busy_lease_ms, reaping_lease_ms, pinned_at_ms}; false where absent.
local session_id = ARGV[1]
return {
  redis.call('HGET', KEYS[4], session_id),
  redis.call('ZSCORE', KEYS[1], session_id),
  redis.call('ZSCORE', KEYS[2], session_id),
  redis.call('ZSCORE', KEYS[3], session_id),
  redis.call('ZSCORE', KEYS[5], session_id),
  redis.call('ZSCORE', KEYS[6], session_id),
}
