-- KEYS[1] queue prefix; ARGV: now, delay ms, then message id and receipt
-- token pairs. Returns messages handed out but never given to a consumer
-- (a throttled batch, a batch cut at the payload limit): each is visible
-- again after the delay, and its receive does not count. A stale receipt
-- is skipped. Answers how many were returned.
local p = KEYS[1]
local now = tonumber(ARGV[1])
local at = now + tonumber(ARGV[2])
local a = attrs(p)
if not a.created_ms then return redis.error_reply('NOQUEUE') end
local n = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local rc = redis.call('HGET', p .. ':count', id)
  if rc and rc == ARGV[i + 1] then
    if tonumber(rc) <= 1 then
      redis.call('HDEL', p .. ':count', id)
      redis.call('HDEL', p .. ':first', id)
    else
      redis.call('HSET', p .. ':count', id, tonumber(rc) - 1)
    end
    if a.fifo == '1' then
      local g = redis.call('HGET', p .. ':group', id)
      if g and redis.call('HINCRBY', p .. ':locks', g, -1) <= 0 then
        redis.call('HDEL', p .. ':locks', g)
        redis.call('ZADD', p .. ':groups', at, g)
      end
    else
      redis.call('ZADD', p .. ':ready', at, id)
    end
    n = n + 1
  end
end
return n
