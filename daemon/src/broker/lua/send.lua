-- KEYS[1] queue prefix; ARGV: now, id, message JSON, delay ms (-1: the
-- queue's), message group, deduplication id. Answers the message id (for a
-- FIFO duplicate within five minutes, the first one's).
local p = KEYS[1]
local now = tonumber(ARGV[1])
local a = attrs(p)
if not a.created_ms then return redis.error_reply('NOQUEUE') end
local delay = tonumber(ARGV[4])
if delay < 0 then delay = tonumber(a.delay_ms or '0') end
if a.fifo == '1' then
  local key = p .. ':dedup:' .. ARGV[6]
  if not redis.call('SET', key, ARGV[2], 'NX', 'PX', 300000) then
    return redis.call('GET', key)
  end
end
push(p, a, ARGV[2], ARGV[3], ARGV[5], now + delay)
return ARGV[2]
