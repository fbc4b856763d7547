-- touch_sessions: stamp activity as touch() does (ZADD XX GT CH), and record who stamped it in the trail of each
-- live session (with trail sources on; otherwise touch is one raw ZADD).
-- KEYS[1] live ZSET  ARGV[1] the source ('touch@<replica>')  ARGV[2], ARGV[3], ... pairs of at_ms, session_id
-- Returns how many sessions' activity moved forward.
local k, moved = {live = KEYS[1]}, 0
for i = 2, #ARGV - 1, 2 do
  local session_id = ARGV[i + 1]
  local changed = redis.call('ZADD', KEYS[1], 'XX', 'GT', 'CH', ARGV[i], session_id)
  moved = moved + changed
  if changed == 1 or redis.call('ZSCORE', KEYS[1], session_id) then stamp_source(k, session_id, ARGV[1]) end
end
return moved
