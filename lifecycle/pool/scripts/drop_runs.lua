-- drop_runs: delete the keys of runs the pruning dropped, unless a run was started again meanwhile.
-- KEYS[2i-1] a run HASH  KEYS[2i] that run's events STREAM (pairs)
-- Returns how many runs' keys were deleted.
local deleted = 0
for i = 1, #KEYS, 2 do
  if redis.call('HGET', KEYS[i], 'status') ~= 'running' then
    redis.call('DEL', KEYS[i], KEYS[i + 1])
    deleted = deleted + 1
  end
end
return deleted
