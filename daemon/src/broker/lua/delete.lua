-- KEYS[1] queue prefix; ARGV: message id, receipt token, now. Answers 1,
-- or 0 when the message was received again since that receipt (the receipt
-- is stale). A message already gone is deleted again without error.
local p = KEYS[1]
local id = ARGV[1]
local now = tonumber(ARGV[3])
local a = attrs(p)
if not a.created_ms then return redis.error_reply('NOQUEUE') end
local rc = redis.call('HGET', p .. ':count', id)
if not rc then
  if redis.call('HEXISTS', p .. ':msgs', id) == 1 then return 0 end
  return 1
end
if rc ~= ARGV[2] then return 0 end
local g = remove(p, a, id)
if g and redis.call('EXISTS', p .. ':g:' .. g) == 1 then
  if redis.call('HINCRBY', p .. ':locks', g, -1) <= 0 then
    redis.call('HDEL', p .. ':locks', g)
    redis.call('ZADD', p .. ':groups', now, g)
  end
end
return 1
