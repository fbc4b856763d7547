-- migrate_records: move session records from the single hash of the first layout into their buckets.
-- KEYS[1] legacy meta HASH ('{lc}:meta')  KEYS[1 + i] the meta bucket HASH of ARGV[i]
-- ARGV session ids
-- A bucket that already holds a record keeps it (a newer write); the legacy field goes either way.
-- Returns how many records moved.
local moved = 0
for i, session_id in ipairs(ARGV) do
  local record = redis.call('HGET', KEYS[1], session_id)
  if record then
    moved = moved + redis.call('HSETNX', KEYS[1 + i], session_id, record)
    redis.call('HDEL', KEYS[1], session_id)
  end
end
return moved
