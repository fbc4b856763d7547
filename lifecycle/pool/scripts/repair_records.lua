-- repair_records: one page of reconciliation over the session records (a batch of meta buckets): a record
-- whose live entry is gone is put back in the pool, a live session without a deadline gets the latest one
-- its profile allows, a tenant session missing from the tenant index is indexed again, and every session is in
-- its owner's set. Writes go out a command per index for the whole page (in slices that unpack can take).
-- KEYS[1] live ZSET  KEYS[2] deadline ZSET  KEYS[3] tenants ZSET  KEYS[4..] meta bucket HASHes
-- ARGV[1] now_ms  ARGV[2] max TTL ms by profile: 'profile=ms,profile=ms' ('' is the default profile)
-- ARGV[3..] (optional) only these records of the one bucket given: a page of a large bucket, so that no
-- script holds Redis for long
-- Returns {records relinked into the pool, deadlines restored, tenant members added, malformed records}.
local now = tonumber(ARGV[1])
local k = {live = KEYS[1]}
local max_ttl = {}
for profile, ms in string.gmatch(ARGV[2], '([^,=]*)=(%d+)') do max_ttl[profile] = tonumber(ms) end
local malformed = 0
local ids, metas = {}, {}
for i = 4, #KEYS do
  -- A bucket some hand turned into another type is reported (as malformed) and skipped, never fatal.
  local fields = {}
  if redis.call('TYPE', KEYS[i]).ok ~= 'hash' then
    if redis.call('EXISTS', KEYS[i]) == 1 then malformed = malformed + 1 end
  elseif #ARGV > 2 then
    local values = redis.call('HMGET', KEYS[i], unpack(ARGV, 3))
    for n = 3, #ARGV do
      if values[n - 2] then fields[#fields + 1], fields[#fields + 2] = ARGV[n], values[n - 2] end
    end
  else
    fields = redis.call('HGETALL', KEYS[i])
  end
  for j = 1, #fields, 2 do
    local meta = unpack_meta(fields[j + 1])
    if meta then
      ids[#ids + 1], metas[#metas + 1] = fields[j], meta
    else
      malformed = malformed + 1
    end
  end
end

-- Sends `command key <args>` once per slice of at most 1,000 of `args`; returns the sum of the replies.
local function in_slices(command, key, prefix, args)
  local total = 0
  for first = 1, #args, 1000 do
    local last = math.min(first + 999, #args)
    local slice = {}
    for _, part in ipairs(prefix) do slice[#slice + 1] = part end
    for n = first, last do slice[#slice + 1] = args[n] end
    total = total + redis.call(command, key, unpack(slice))
  end
  return total
end

-- A record without its live entry is a session Redis forgot it holds: it still runs for its user. Back in the
-- pool it counts against the cap again (which then refuses until the pool is under it).
local live_args, tenant_args, owned, deadlines = {}, {}, {}, 0
for n, session_id in ipairs(ids) do
  live_args[#live_args + 1], live_args[#live_args + 2] = now, session_id
  local meta = metas[n]
  if meta.tenant ~= '' then
    tenant_args[#tenant_args + 1], tenant_args[#tenant_args + 2] = 0, tenant_member(meta.tenant, session_id)
  end
  if meta.owner ~= '' then
    owned[meta.owner] = owned[meta.owner] or {}
    table.insert(owned[meta.owner], session_id)
  end
end
local relinked = in_slices('ZADD', KEYS[1], {'NX'}, live_args)
for first = 1, #ids, 1000 do
  local slice = {}
  for n = first, math.min(first + 999, #ids) do slice[#slice + 1] = ids[n] end
  local at = redis.call('ZMSCORE', KEYS[2], unpack(slice))
  for offset, score in ipairs(at) do
    if not score then
      local meta = metas[first + offset - 1]
      local ttl = max_ttl[meta.profile] or max_ttl['']
      redis.call('ZADD', KEYS[2], tonumber(meta.created) + ttl, slice[offset])
      deadlines = deadlines + 1
    end
  end
end
local members = in_slices('ZADD', KEYS[3], {'NX'}, tenant_args)
for owner, sessions in pairs(owned) do
  in_slices('SADD', owned_key(k, owner), {}, sessions)
end
return {relinked, deadlines, members, malformed}
