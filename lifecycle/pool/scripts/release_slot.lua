-- release_slot: give back the slot of a reservation that will not be activated. Idempotent.
-- KEYS[1] reservations ZSET  KEYS[2] slots STRING  KEYS[3] tenants ZSET  KEYS[4] live ZSET  KEYS[5] counters HASH
-- ARGV[1] member 'token|owner|tenant'  ARGV[2] '1' when its sandbox failed to start (counted once: a resend
-- finds it gone)
-- Returns 1 if the reservation was held and is now released, 0 if it was already gone.
local k = {reservations = KEYS[1], slots = KEYS[2], tenants = KEYS[3], live = KEYS[4]}
if redis.call('ZREM', k.reservations, ARGV[1]) == 0 then
  return 0
end
give_back(k, reservation_tenant(ARGV[1]), ARGV[1])
if ARGV[2] == '1' then redis.call('HINCRBY', KEYS[5], 'failed_start', 1) end
return 1
