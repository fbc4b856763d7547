-- pool_state: whether the pool can admit, as reserve_slot decides it.
-- KEYS[1] generation STRING  KEYS[2] verified STRING
-- Returns {generation present (0/1), verified on this server's replication history (0/1), that history's id}.
return {redis.call('EXISTS', KEYS[1]), redis.call('GET', KEYS[2]) == replication_id() and 1 or 0,
        replication_id()}
