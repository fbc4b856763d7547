-- extend_claim: confirm an eviction claim is still this token's and extend its lease, right before an
-- irreversible step (the sandbox release), so a worker that was paused past its lease does not act.
-- KEYS[1] reaping ZSET  KEYS[2] claims HASH  KEYS[3] meta bucket HASH
-- ARGV[1] session_id  ARGV[2] token  ARGV[3] new lease expiry ms
-- Returns 1 still ours (extended), 0 taken over or gone, -1 still ours but a turn finished since the claim
-- (the durable write does not cover it: the eviction must be undone, not completed; not extended).
local claim = unpack_claim(redis.call('HGET', KEYS[2], ARGV[1]))
if not claim or claim.token ~= ARGV[2] then
  return 0
end
if turn_finished_since(claim, redis.call('HGET', KEYS[3], ARGV[1])) then
  return -1
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
