-- touch_sessions: stamp activity as touch() does (ZADD XX GT CH), refusing a stamp whose caller's tenure is stale
-- (see stale), and record who stamped it in the trail of each live session (with trail sources on). Without
-- tenures and sources, touch is one raw ZADD instead.
-- KEYS[1] live ZSET  KEYS[1 + i] the meta bucket of session i
-- ARGV[1] the source ('touch@<replica>'; '' the trail's sources are off)  then per session i, 3 fields from
-- ARGV[3i - 1]: at_ms, session_id, the caller's tenure ('' none)
-- Returns {how many sessions' activity moved forward, how many stamps were refused as stale}.
local k, moved, refused = {live = KEYS[1]}, 0, 0
for i = 1, #KEYS - 1 do
  local base = 3 * i - 1
  local session_id, tenure = ARGV[base + 1], ARGV[base + 2]
  local meta = tenure ~= '' and unpack_meta(redis.call('HGET', KEYS[1 + i], session_id))
  if meta and stale(meta, tenure) then
    refused = refused + 1
  else
    local changed = redis.call('ZADD', KEYS[1], 'XX', 'GT', 'CH', ARGV[base], session_id)
    moved = moved + changed
    if ARGV[1] ~= '' and (changed == 1 or redis.call('ZSCORE', KEYS[1], session_id)) then
      stamp_source(k, session_id, ARGV[1])
    end
  end
end
return {moved, refused}
