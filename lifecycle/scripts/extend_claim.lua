-- extend_claim: confirm an eviction claim is still this token's and extend its lease, right before an
-- irreversible step (the sandbox release), so a worker that was paused past its lease does not act.
-- KEYS[1] reaping ZSET  KEYS[2] claims HASH
-- ARGV[1] session_id  ARGV[2] token  ARGV[3] new lease expiry ms
-- Returns 1 still ours (extended), 0 taken over or gone.
local claim = redis.call('HGET', KEYS[2], ARGV[1])
if not claim or string.match(claim, '^(%d+)|') ~= ARGV[2] then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
