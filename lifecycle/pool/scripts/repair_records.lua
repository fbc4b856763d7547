-- repair_records: one page of reconciliation over the session records (a batch of meta buckets): a record
-- whose live entry is gone is put back in the pool, a live session without a deadline gets the latest one
-- its profile allows, a tenant session missing from the tenant index is indexed again, and every session is in
-- its owner's set.
-- KEYS[1] live ZSET  KEYS[2] deadline ZSET  KEYS[3] tenants ZSET  KEYS[4..] meta bucket HASHes
-- ARGV[1] now_ms  ARGV[2] max TTL ms by profile: 'profile=ms,profile=ms' ('' is the default profile)
-- Returns {records relinked into the pool, deadlines restored, tenant members added, malformed records}.
local now = tonumber(ARGV[1])
local k = {live = KEYS[1]}
local max_ttl = {}
for profile, ms in string.gmatch(ARGV[2], '([^,=]*)=(%d+)') do max_ttl[profile] = tonumber(ms) end
local relinked, deadlines, members, malformed = 0, 0, 0, 0
for i = 4, #KEYS do
  -- A bucket some hand turned into another type is reported (as malformed) and skipped, never fatal.
  local fields = {}
  if redis.call('TYPE', KEYS[i]).ok == 'hash' then
    fields = redis.call('HGETALL', KEYS[i])
  elseif redis.call('EXISTS', KEYS[i]) == 1 then
    malformed = malformed + 1
  end
  for j = 1, #fields, 2 do
    local session_id, meta = fields[j], unpack_meta(fields[j + 1])
    if not meta then
      malformed = malformed + 1
    else
      -- A record without its live entry is a session Redis forgot it holds: it still runs for its user.
      -- Back in the pool it counts against the cap again (which then refuses until the pool is under it).
      relinked = relinked + redis.call('ZADD', KEYS[1], 'NX', now, session_id)
      index_owner(k, meta.owner, session_id)  -- the owner index, back where outside damage took it
      if not redis.call('ZSCORE', KEYS[2], session_id) then
        local ttl = max_ttl[meta.profile] or max_ttl['']
        redis.call('ZADD', KEYS[2], tonumber(meta.created) + ttl, session_id)
        deadlines = deadlines + 1
      end
      if meta.tenant ~= '' then
        members = members + redis.call('ZADD', KEYS[3], 'NX', 0, tenant_member(meta.tenant, session_id))
      end
    end
  end
end
return {relinked, deadlines, members, malformed}
