-- mark_verified: the pool is initialised, or verified against MongoDB, on this server: admission resumes.
-- KEYS[1] generation STRING  KEYS[2] verified STRING
-- ARGV[1] the generation (set only if absent)  ARGV[2] the replication id the caller verified on
-- Returns 1, or 0 if the server's replication history is no longer that one (it restarted or failed over
-- meanwhile: verify again).
local replid = replication_id()
if ARGV[2] ~= replid then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'NX')
redis.call('SET', KEYS[2], replid)
return 1
