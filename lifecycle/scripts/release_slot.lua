-- release_slot: give back the slot of a reservation that will not be activated. Idempotent.
-- KEYS[1] reservations ZSET  KEYS[2] slots STRING  KEYS[3] tenant_slots HASH
-- ARGV[1] member 'token|owner|tenant'
-- Returns 1 if the reservation was held and is now released, 0 if it was already gone.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
give_back(KEYS[2], KEYS[3], reservation_tenant(ARGV[1]))
return 1
