-- read_tied: the members tied at one score that sort after a given member, as Redis orders a tie (bytewise).
-- A sweep pages through a tie group by member, not by offset: a member removed meanwhile shifts nothing.
-- KEYS[1] ZSET  ARGV[1] score  ARGV[2] the last member read  ARGV[3] at most this many
-- Returns the members, in order. Reads only: O(log n) per probe, log2(tie group) probes.
local key, score, after, count = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])

-- Bytewise, as Redis compares members (Lua's `<` on strings follows the server's locale).
local function sorts_after(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return #a > #b
end

local stop = redis.call('ZCOUNT', key, '-inf', score)  -- one past the group's last rank
local low, high = redis.call('ZCOUNT', key, '-inf', '(' .. score), stop  -- from its first rank
while low < high do  -- the first rank whose member sorts after `after`
  local middle = math.floor((low + high) / 2)
  if sorts_after(redis.call('ZRANGE', key, middle, middle)[1], after) then
    high = middle
  else
    low = middle + 1
  end
end
if low == stop then return {} end
return redis.call('ZRANGE', key, low, math.min(low + count, stop) - 1)
