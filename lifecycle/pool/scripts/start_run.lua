-- start_run: begin a run (or begin it again once its old one finished or was dropped).
-- KEYS[1] the run HASH  KEYS[2] the run's events STREAM  KEYS[3] runs_terminal ZSET
-- ARGV[1] run_id  ARGV[2] session_id ('' none)  ARGV[3] now_ms
-- Returns 1 started, 0 a run with this id is running.
if redis.call('HGET', KEYS[1], 'status') == 'running' then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'running', 'session_id', ARGV[2], 'started_ms', ARGV[3])
return 1
