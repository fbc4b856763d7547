-- release_slot: give back the slot of a reservation that will not be activated. Idempotent.
-- KEYS[1] reservations ZSET  KEYS[2] reservation_info HASH  KEYS[3] slots STRING  KEYS[4] tenant_slots HASH
-- ARGV[1] token
-- Returns 1 if the reservation was held and is now released, 0 if it was already gone.
local info = redis.call('HGET', KEYS[2], ARGV[1]) or '|'
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[1])
give_back(KEYS[3], KEYS[4], string.match(info, '|(.*)$'))
return 1
