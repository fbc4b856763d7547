-- read_next_free: when a slot will likely come back by itself, for a Retry-After: the earliest reservation
-- lease to run out and the least recent activity in the pool (whose session idles out first). Reads only.
-- KEYS[1] reservations ZSET  KEYS[2] live ZSET
-- Returns {earliest lease expiry ms or false, oldest last_active ms or false}.
local lease = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return {lease[2] or false, oldest[2] or false}
