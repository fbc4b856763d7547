-- append_event: add one frame to a running run's capped stream.
-- KEYS[1] the run HASH  KEYS[2] the run's events STREAM
-- ARGV[1] frame (JSON)  ARGV[2] max events kept
-- Returns the stream id, or false if the run is not running (finished, dropped, never started).
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then
  return false
end
return redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '*', 'f', ARGV[1])
