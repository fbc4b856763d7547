-- _lib: helpers prepended to every script (not a script of its own).
-- A session record is 'owner|tenant|profile|created_ms|turn_seq'; '' stands for none.

local function unpack_meta(record)
  local owner, tenant, profile, created, seq = string.match(record, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  return {owner = owner, tenant = tenant, profile = profile, created = created, seq = tonumber(seq)}
end

local function pack_meta(m)
  return table.concat({m.owner, m.tenant, m.profile, m.created, string.format('%d', m.seq)}, '|')
end

-- Give one slot back to the pool and to its tenant.
local function give_back(slots_key, tenant_slots_key, tenant)
  redis.call('DECR', slots_key)
  if tenant ~= '' and redis.call('HINCRBY', tenant_slots_key, tenant, -1) <= 0 then
    redis.call('HDEL', tenant_slots_key, tenant)
  end
end

-- A reservation is a sorted-set member 'token|owner|tenant' (scored by its lease expiry): everything
-- a reservation needs travels in the member, so no second structure has to be kept in step.
local function reservation_tenant(member)
  return string.match(member, '^[^|]*|[^|]*|(.*)$') or ''
end

-- Give the slots of expired reservations back (at most `limit` of them); returns how many.
local function purge_reservations(reservations_key, slots_key, tenant_slots_key, now_ms, limit)
  local expired = redis.call('ZRANGEBYSCORE', reservations_key, '-inf', now_ms, 'LIMIT', 0, limit)
  for _, member in ipairs(expired) do
    redis.call('ZREM', reservations_key, member)
    give_back(slots_key, tenant_slots_key, reservation_tenant(member))
  end
  return #expired
end

-- Turn leases of one session: 'token=lease_ms,token=lease_ms'; expired ones are dropped on read.
local function read_leases(turns_key, session_id, now_ms)
  local leases = {}
  local packed = redis.call('HGET', turns_key, session_id)
  if packed then
    for token, lease in string.gmatch(packed, '([^,=]+)=(%d+)') do
      if tonumber(lease) > now_ms then leases[token] = tonumber(lease) end
    end
  end
  return leases
end

-- Store the leases back and make the busy score their maximum (or clear busy when none is left).
-- Returns the number of turns still holding the session busy.
local function write_leases(turns_key, busy_key, session_id, leases)
  local parts, latest = {}, nil
  for token, lease in pairs(leases) do
    parts[#parts + 1] = token .. '=' .. string.format('%d', lease)
    if latest == nil or lease > latest then latest = lease end
  end
  if latest == nil then
    redis.call('HDEL', turns_key, session_id)
    redis.call('ZREM', busy_key, session_id)
  else
    redis.call('HSET', turns_key, session_id, table.concat(parts, ','))
    redis.call('ZADD', busy_key, latest, session_id)
  end
  return #parts
end

-- Remove a session from every live structure and give its slot back. The caller checked it is live.
local function drop_session(k, session_id, tenant)
  redis.call('ZREM', k.live, session_id)
  redis.call('ZREM', k.deadline, session_id)
  redis.call('ZREM', k.busy, session_id)
  redis.call('HDEL', k.turns, session_id)
  redis.call('HDEL', k.meta, session_id)
  give_back(k.slots, k.tenant_slots, tenant)
end

-- Drop finished runs that finished at or before `oldest_kept_ms`, then the oldest beyond `max_kept`, from
-- the terminal set; returns their ids (their keys are deleted by drop_runs, which is given them).
local function prune_finished_runs(terminal_key, oldest_kept_ms, max_kept)
  local dropped = redis.call('ZRANGEBYSCORE', terminal_key, '-inf', oldest_kept_ms)
  local over = redis.call('ZCARD', terminal_key) - #dropped - max_kept
  if over > 0 then
    for _, run_id in ipairs(redis.call('ZRANGE', terminal_key, #dropped, #dropped + over - 1)) do
      dropped[#dropped + 1] = run_id
    end
  end
  for _, run_id in ipairs(dropped) do
    redis.call('ZREM', terminal_key, run_id)
  end
  return dropped
end
