-- _lib: helpers prepended to every script (not a script of its own).
-- A session record is 'owner|tenant|profile|created_ms|turn_seq|tenure'; '' stands for none. The tenure is the
-- fencing token drawn when this life of the session was activated or restored (records written before tenures,
-- and a rebuild's stand-ins, have none: see stale).
-- Scripts validate everything they read before their first write, and answer state they cannot use (a
-- damaged record, a missing index entry) with a status code, never a Lua error: Redis does not roll back
-- the writes a script made before an error.

-- This server's replication history (INFO's master_replid): a restart or a failover to a replica starts a new
-- one, and the pool must then be verified before it admits (writes the old history took may be missing).
-- '-' where INFO cannot be read (fakeredis): no history is then told apart.
-- (A plain find: an unanchored pattern match tries every offset of the reply, and costs more than the INFO.)
local function replication_id()
  local ok, info = pcall(redis.call, 'INFO', 'replication')
  if not ok or type(info) ~= 'string' then return '-' end
  local at = string.find(info, 'master_replid:', 1, true)
  if not at then return '-' end
  return string.match(info, '^%w+', at + 14) or '-'
end

-- Whether the pool is verified on this server's replication history (see pool_state.lua): a pool from before
-- verification existed (a marker, no verified key) counts as verified.
local function verified_here(generation_key, verified_key)
  local verified = redis.call('GET', verified_key)
  return verified == replication_id() or (not verified and redis.call('EXISTS', generation_key) == 1)
end

-- A fresh fencing token (INCR of the epoch). Tokens never repeat, even after a failover to a replica that missed
-- the last ones, or a restart from an older snapshot: the first token of each replication history first lifts the
-- epoch to Redis's clock in ms, above every token issued before unless they came faster than one a millisecond
-- since the last lift (as the rebuild's lift). The history the epoch was last lifted on is '<epoch>_history'.
local function fresh_token(epoch_key)
  local history_key, replid = epoch_key .. '_history', replication_id()
  if redis.call('GET', history_key) ~= replid then
    local time = redis.call('TIME')
    local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
    if tonumber(redis.call('GET', epoch_key) or '0') < now_ms then redis.call('SET', epoch_key, now_ms) end
    redis.call('SET', history_key, replid)
  end
  return redis.call('INCR', epoch_key)
end

-- Why a live session's app may not act on it now: -2 it is being evicted (a claim refuses even after its lease
-- ran out: until a sweep resolves it, MongoDB may already say resumable), -1 it is not live, -3 it is past its
-- hard deadline; else nil, with its activity and its deadline (nil: lost to outside damage).
local function refusal(live_key, deadline_key, reaping_key, session_id, now)
  if redis.call('ZSCORE', reaping_key, session_id) then return -2 end
  local last_active = redis.call('ZSCORE', live_key, session_id)
  if not last_active then return -1 end
  local deadline = redis.call('ZSCORE', deadline_key, session_id)
  if deadline and tonumber(deadline) <= now then return -3 end
  return nil, last_active, deadline
end

-- The record as a table, or nil when it is missing or malformed (outside damage: a hand edit).
local function unpack_meta(record)
  if not record then return nil end
  local owner, tenant, profile, created, seq, tenure = string.match(record, '^([^|]*)|([^|]*)|([^|]*)|(%d+)|(%d+)|(%d+)$')
  if not owner then
    owner, tenant, profile, created, seq = string.match(record, '^([^|]*)|([^|]*)|([^|]*)|(%d+)|(%d+)$')
    if not owner then return nil end
  end
  return {owner = owner, tenant = tenant, profile = profile, created = created, seq = tonumber(seq), tenure = tenure}
end

local function pack_meta(m)
  local fields = {m.owner, m.tenant, m.profile, m.created, string.format('%d', m.seq)}
  if m.tenure then fields[6] = m.tenure end
  return table.concat(fields, '|')
end

-- Whether a call made on behalf of the copy of a session of `tenure` ('': the caller gave none) comes from an
-- earlier life than the record's: a replica that paused while the session was evicted and restored elsewhere.
-- Such a call is refused and changes nothing. A record without a tenure cannot tell, and lets it through.
local function stale(meta, tenure)
  return tenure ~= '' and meta.tenure ~= nil and meta.tenure ~= tenure
end

-- The tenant index is one sorted set, every score 0, of 'tenant|session_id' (a live session) and
-- 'tenant|token|owner|tenant' (a reservation) members: a tenant's slots are one ZLEXCOUNT, and a
-- transition adds or removes exactly its own member, so no transition can ever push a tenant's count
-- below the truth (a counter's DECR on a lost key would). Ids never hold '|', and every character an id
-- may hold sorts below '|' and '}', so '[t|' .. '(t}' is exactly tenant t's range.
local TENANTS_KNOWN = '#'  -- the index's marker member: absent means the index was lost (or never built)

local function tenant_member(tenant, id)
  return tenant .. '|' .. id
end

-- A session whose tenant outside damage erased (its record and the index lost together) is filed under
-- UNKNOWN_TENANT, which no valid id can be, and counts against every capped tenant until it ends.
local UNKNOWN_TENANT = '?'

local function tenant_count(tenants_key, tenant)
  local function count(t) return redis.call('ZLEXCOUNT', tenants_key, '[' .. t .. '|', '(' .. t .. '}') end
  return count(tenant) + count(UNKNOWN_TENANT)
end

-- What the sets say the pool holds: live sessions plus held (not yet purged) reservations.
local function pool_truth(k)
  return redis.call('ZCARD', k.live) + redis.call('ZCARD', k.reservations)
end

-- The slots admission is judged on: the counter, but never less than the sets hold, so a lost or lowered
-- counter cannot let the pool overshoot before reconciliation repairs (and reports) it.
local function pool_used(k)
  local truth = pool_truth(k)
  local counter = tonumber(redis.call('GET', k.slots) or '0') or 0
  if counter > truth then return counter end
  return truth
end

-- The counter as a whole number, or nil when it is missing or not one INCR could move (a hand edit such
-- as '1.0'): then transitions leave it alone and reconcile rewrites it.
local function counter_value(k)
  local counter = redis.call('GET', k.slots)
  if counter and string.match(counter, '^%-?%d+$') then return tonumber(counter) end
  return nil
end

-- One slot came back; the caller already removed the member from live or reservations. The counter never
-- goes below what the sets hold, and a missing counter is never created here (reconcile does that).
local function give_back(k, tenant, id)
  local counter = counter_value(k)
  if counter and counter > pool_truth(k) then redis.call('DECR', k.slots) end
  if tenant ~= '' then redis.call('ZREM', k.tenants, tenant_member(tenant, id)) end
end

-- A reservation is a sorted-set member 'token|owner|tenant' (scored by its lease expiry): everything
-- a reservation needs travels in the member, so no second structure has to be kept in step.
local function reservation_tenant(member)
  return string.match(member, '^[^|]*|[^|]*|(.*)$') or ''
end

-- Give the slots of expired reservations back (at most `limit` of them, -1 all); returns how many.
local function purge_reservations(k, now_ms, limit)
  local expired = redis.call('ZRANGEBYSCORE', k.reservations, '-inf', now_ms, 'LIMIT', 0, limit)
  for _, member in ipairs(expired) do
    redis.call('ZREM', k.reservations, member)
    give_back(k, reservation_tenant(member), member)
  end
  return #expired
end

-- Turn leases of one session: 'token=lease_ms:start_ms,...' (entries written before turns kept their start have
-- no ':start_ms'). Returns the current leases by token (expired ones are dropped), and every entry's start (a
-- lapsed turn renewed keeps it).
local function read_leases(turns_key, session_id, now_ms)
  local leases, starts = {}, {}
  local packed = redis.call('HGET', turns_key, session_id)
  if packed then
    for token, lease, start in string.gmatch(packed, '([^,=]+)=(%d+):?(%d*)') do
      if tonumber(lease) > now_ms then leases[token] = tonumber(lease) end
      if start ~= '' then starts[token] = start end
    end
  end
  return leases, starts
end

-- The turn in flight the longest ago of those the entry lists, current or lapsed (a replica that died mid-turn
-- never ended it): when it started ('0' when no entry says: written before starts were kept), or nil when no
-- turn is in flight.
local function turn_in_flight(turns_key, session_id)
  local packed = redis.call('HGET', turns_key, session_id)
  if not packed then return nil end
  local any, earliest = false, nil
  for _, _, start in string.gmatch(packed, '([^,=]+)=(%d+):?(%d*)') do
    any = true
    local at = tonumber(start)
    if at and (earliest == nil or at < earliest) then earliest = at end
  end
  if not any then return nil end
  return string.format('%d', earliest or 0)
end

-- Store the leases back (each with its start, where known) and make the busy score their maximum (or clear
-- busy when none is left). Returns the number of turns still holding the session busy.
local function write_leases(turns_key, busy_key, session_id, leases, starts)
  local parts, latest = {}, nil
  for token, lease in pairs(leases) do
    local start = starts[token]
    parts[#parts + 1] = token .. '=' .. string.format('%d', lease) .. (start and (':' .. start) or '')
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

-- A key of the pool named after its live key ('{prefix}:<name>'), so it shares its hash tag (and Cluster slot):
-- for the keys a script reaches through a session (its owner's set, its pins, its trail).
local function pool_key(k, name)
  return string.match(k.live, '^(.*):[^:]*$') .. ':' .. name
end

-- The SET of the sessions `owner` owns, '{prefix}:owned:<owner>' (see Keys.owned).
local function owned_key(k, owner)
  return pool_key(k, 'owned:' .. owner)
end

local function index_owner(k, owner, session_id)
  if owner ~= '' then redis.call('SADD', owned_key(k, owner), session_id) end
end

-- Record what stamped the session's activity ('touch@api-1'), keeping its decisions; '' records nothing (the
-- trail is off).
local function stamp_source(k, session_id, source)
  if source == '' then return end
  local trail = pool_key(k, 'trail')
  local packed = redis.call('HGET', trail, session_id)
  if packed and string.sub(packed, 1, #source + 1) == source .. ';' or packed == source then return end
  local decisions = packed and string.match(packed, '^[^;]*(;.*)$') or ''
  redis.call('HSET', trail, session_id, source .. decisions)
end

-- Remove a session from every live structure and give its slot back. The caller checked it is live.
-- Forget what one life of the session held besides its place in the pool: its owner's index entry, its pin,
-- its trail, its busy lease and turns in flight (k.busy and k.turns, or the pool's own keys).
local function forget_life(k, session_id, tenant, owner)
  if owner and owner ~= '' then redis.call('SREM', owned_key(k, owner), session_id) end
  if redis.call('ZREM', pool_key(k, 'pinned'), session_id) == 1 and tenant ~= '' then
    redis.call('ZREM', pool_key(k, 'pinned_tenants'), tenant_member(tenant, session_id))
  end
  redis.call('HDEL', pool_key(k, 'trail'), session_id)
  redis.call('ZREM', k.busy or pool_key(k, 'busy'), session_id)
  redis.call('HDEL', k.turns or pool_key(k, 'turns'), session_id)
end

local function drop_session(k, session_id, tenant, owner)
  forget_life(k, session_id, tenant, owner)
  redis.call('ZREM', k.live, session_id)
  redis.call('ZREM', k.deadline, session_id)
  redis.call('HDEL', k.meta, session_id)
  give_back(k, tenant, session_id)
end

-- An eviction claim is 'token|reason|turn_seq': the turn sequence the claim saw, so the steps after the
-- durable write can tell that a turn finished meanwhile (the write no longer covers it). Claims written
-- before the sequence was kept ('token|reason') have none.
local function unpack_claim(claim)
  if not claim then return nil end
  local token, reason, seq = string.match(claim, '^(%d+)|([^|]*)|?(%d*)$')
  if not token then return nil end
  return {token = token, reason = reason, seq = tonumber(seq)}
end

-- Whether a turn finished since the claim was taken (not for expiry: the hard deadline ends it anyway).
local function turn_finished_since(claim, record)
  if claim.seq == nil or claim.reason == 'expired' then return false end
  local meta = unpack_meta(record)
  return meta ~= nil and meta.seq > claim.seq
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
