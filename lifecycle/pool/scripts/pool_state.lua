-- pool_state: whether the pool can admit, as reserve_slot decides it.
-- KEYS[1] generation STRING  KEYS[2] verified STRING
-- Returns {generation present (0/1), verified on this server's replication history (0/1), that history's id}.
-- A pool from before verification existed (a marker, no verified key) counts as verified: it adopts the
-- history it is on at its next reservation.
local initialised, verified, replid = redis.call('EXISTS', KEYS[1]), redis.call('GET', KEYS[2]), replication_id()
return {initialised, (verified == replid or (not verified and initialised == 1)) and 1 or 0, replid}
