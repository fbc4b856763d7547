-- release_slot: give back the slot of a reservation that will not be activated. Idempotent.
-- KEYS[1] reservations ZSET  KEYS[2] slots STRING  KEYS[3] tenants ZSET  KEYS[4] live ZSET
-- ARGV[1] member 'token|owner|tenant'
-- Returns 1 if the reservation was held and is now released, 0 if it was already gone.
local k = {reservations = KEYS[1], slots = KEYS[2], tenants = KEYS[3], live = KEYS[4]}
if redis.call('ZREM', k.reservations, ARGV[1]) == 0 then
  return 0
end
give_back(k, reservation_tenant(ARGV[1]), ARGV[1])
return 1
