-- KEYS[1] queue prefix; ARGV: now. Answers [messages, visible, delayed]:
-- the rest are in flight.
local p = KEYS[1]
local now = tonumber(ARGV[1])
local a = attrs(p)
if not a.created_ms then return redis.error_reply('NOQUEUE') end
local total = redis.call('HLEN', p .. ':msgs')
local hidden = 0
local delayed = 0
if a.fifo == '1' then
  for _, g in ipairs(redis.call('ZRANGEBYSCORE', p .. ':groups', '(' .. now, '+inf')) do
    local locked = tonumber(redis.call('HGET', p .. ':locks', g) or '0')
    if locked > 0 then hidden = hidden + locked else delayed = delayed + redis.call('ZCARD', p .. ':g:' .. g) end
  end
else
  hidden = redis.call('ZCOUNT', p .. ':ready', '(' .. now, '+inf')
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', p .. ':ready', '(' .. now, '+inf', 'LIMIT', 0, 10000)) do
    if not redis.call('HGET', p .. ':count', id) then delayed = delayed + 1 end
  end
  hidden = hidden - delayed
end
return { total, total - hidden - delayed, delayed }
