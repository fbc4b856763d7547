-- append_trail: record decisions about live sessions in their capped trails (see lifecycle/pool/trail.py).
-- KEYS[1] trail HASH  KEYS[2] live ZSET
-- ARGV[1] the most entries a trail keeps  ARGV[2] now_ms  ARGV[3], ARGV[4], ... pairs of session_id and entry
-- 'decision,reason,detail'. A session no longer live gets none (its trail left with it). Returns how many were
-- recorded.
local keep, now, recorded = tonumber(ARGV[1]), ARGV[2], 0
for i = 3, #ARGV - 1, 2 do
  local session_id, decision = ARGV[i], ARGV[i + 1]
  if redis.call('ZSCORE', KEYS[2], session_id) then
    local packed = redis.call('HGET', KEYS[1], session_id) or ''
    local parts = {}
    for part in string.gmatch(packed .. ';', '([^;]*);') do parts[#parts + 1] = part end
    local source, last = parts[1] or '', parts[#parts]
    local count = 1
    if #parts > 1 then
      local at, what, n = string.match(last, '^(%d+),(.*),(%d+)$')
      if what == decision then
        count = tonumber(n) + 1
        table.remove(parts)
      end
    end
    parts[#parts + 1] = now .. ',' .. decision .. ',' .. string.format('%d', count)
    while #parts - 1 > keep do table.remove(parts, 2) end
    redis.call('HSET', KEYS[1], session_id, table.concat(parts, ';'))
    recorded = recorded + 1
  end
end
return recorded
