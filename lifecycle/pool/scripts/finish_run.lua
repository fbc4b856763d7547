-- finish_run: a run's first terminal transition stamps its finish time (once), gives its keys a backstop
-- expiry, and prunes finished runs beyond the retention window or the cap in the same atomic step.
-- KEYS[1] the run HASH  KEYS[2] the run's events STREAM  KEYS[3] runs_terminal ZSET
-- ARGV[1] run_id  ARGV[2] status (completed | failed | cancelled)  ARGV[3] now_ms  ARGV[4] retention ms
-- ARGV[5] max finished runs  ARGV[6] backstop expiry ms
-- Returns {finished (1 first transition, 0 already terminal, -1 unknown run), run_ids dropped...}.
-- The dropped runs' own keys are deleted by the caller: scripts only touch keys they are given.
local finished = -1
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'running' then
  redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_ms', ARGV[3])
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
  finished = 1
elseif status then
  finished = 0
end
local reply = {finished}
for _, run_id in ipairs(prune_finished_runs(KEYS[3], tonumber(ARGV[3]) - tonumber(ARGV[4]), tonumber(ARGV[5]))) do
  reply[#reply + 1] = run_id
end
return reply
