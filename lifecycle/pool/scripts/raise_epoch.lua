-- raise_epoch: lift the fencing epoch to at least ARGV[1] (a pool rebuilt after Redis lost its state starts
-- above every token MongoDB holds, so its writes are never fenced off by the previous life's).
-- KEYS[1] epoch STRING  ARGV[1] the lowest the epoch may be
-- Returns the epoch.
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local wanted = tonumber(ARGV[1])
if current < wanted then
  redis.call('SET', KEYS[1], wanted)
  return wanted
end
return current
