-- reclaim_session: take over an eviction claim whose lease ran out (its worker crashed or paused), under
-- a fresh token, so the stale worker's remaining steps are fenced off.
-- KEYS[1] reaping ZSET  KEYS[2] claims HASH  KEYS[3] epoch STRING  KEYS[4] meta bucket HASH  KEYS[5] live ZSET
-- KEYS[6] deadline ZSET  KEYS[7] turns HASH  KEYS[8] trail HASH
-- ARGV[1] session_id  ARGV[2] now_ms  ARGV[3] new claim lease expiry ms
-- Returns {1, old_token, new_token, reason, record, expires_at, claimed_seq, turn_started, trail} taken over
-- (record false if the session is no longer live; claimed_seq -1 for a claim that kept none; turn_started and
-- trail as claim_session's), {0} the claim is current or gone.
-- A claim the scripts cannot read (a hand edit) is taken over as an idle claim with no sequence.
local session_id = ARGV[1]
local lease = redis.call('ZSCORE', KEYS[1], session_id)
local packed = redis.call('HGET', KEYS[2], session_id)
if not lease or tonumber(lease) > tonumber(ARGV[2]) then
  return {0}
end
local claim = unpack_claim(packed) or {token = '0', reason = 'idle', seq = nil}
local record = false
if redis.call('ZSCORE', KEYS[5], session_id) then record = redis.call('HGET', KEYS[4], session_id) end
-- A claim that kept no sequence (written before claims did, or unreadable) takes the session's sequence
-- now: recovery checks the durable write covers it, and every later step sees a turn finished after it.
local meta = unpack_meta(record)
local seq = claim.seq or (meta and meta.seq)
local token = fresh_token(KEYS[3])
redis.call('ZADD', KEYS[1], ARGV[3], session_id)
redis.call('HSET', KEYS[2], session_id, token .. '|' .. claim.reason .. (seq and ('|' .. string.format('%d', seq)) or ''))
return {1, claim.token, token, claim.reason, record, redis.call('ZSCORE', KEYS[6], session_id), claim.seq or -1,
        turn_in_flight(KEYS[7], session_id) or '-1', redis.call('HGET', KEYS[8], session_id) or ''}
