-- forget_replicas: forget the lost replicas (heartbeat lapsed) that own no session any more, judged by their
-- sets of sessions (see Keys.owned). Reconcile calls it after its record pass put every session back in its
-- owner's set: only then does a missing set mean nothing is owned (a pool upgraded in place had none).
-- KEYS[1] replicas ZSET  KEYS[2] live ZSET (the owner sets are named after it)
-- ARGV[1] now_ms  ARGV[2..] replicas to look at
-- Returns how many were forgotten (one that heartbeat again, or owns a session, stays).
local k = {live = KEYS[2]}
local forgotten = 0
for i = 2, #ARGV do
  local until_ms = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if until_ms and tonumber(until_ms) <= tonumber(ARGV[1]) and redis.call('EXISTS', owned_key(k, ARGV[i])) == 0 then
    redis.call('ZREM', KEYS[1], ARGV[i])
    forgotten = forgotten + 1
  end
end
return forgotten
