-- read_stats: pool figures in one atomic read.
-- KEYS[1] live ZSET  KEYS[2] reservations ZSET  KEYS[3] busy ZSET  KEYS[4] reaping ZSET  KEYS[5] slots STRING
-- ARGV[1] now_ms
-- Returns {live, unexpired reservations, current busy leases, reaping, slot counter}.
local now = '(' .. ARGV[1]
return {
  redis.call('ZCARD', KEYS[1]),
  redis.call('ZCOUNT', KEYS[2], now, '+inf'),
  redis.call('ZCOUNT', KEYS[3], now, '+inf'),
  redis.call('ZCARD', KEYS[4]),
  tonumber(redis.call('GET', KEYS[5]) or '0'),
}
