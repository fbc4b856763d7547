-- abort_claim: give up an eviction; the session stays live. Only the claim's own token can abort it.
-- KEYS[1] reaping ZSET  KEYS[2] claims HASH
-- ARGV[1] session_id  ARGV[2] token
-- Returns 1 released, 0 the claim is gone or belongs to another token.
local claim = unpack_claim(redis.call('HGET', KEYS[2], ARGV[1]))
if not claim or claim.token ~= ARGV[2] then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
