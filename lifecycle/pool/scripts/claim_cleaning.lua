-- claim_cleaning: let a worktree cleaner act on a session's worktree only while the session is not live;
-- until released (or the lease runs out), activating or restoring that session is refused.
-- KEYS[1] live ZSET  KEYS[2] cleaning ZSET
-- ARGV[1] session_id  ARGV[2] now_ms  ARGV[3] lease expiry ms
-- Returns 1 claimed, 0 the session is live, -1 another cleaner holds it.
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
local held = redis.call('ZSCORE', KEYS[2], ARGV[1])
if held and tonumber(held) > tonumber(ARGV[2]) then
  return -1
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
