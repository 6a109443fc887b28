-- KEYS[1] queue prefix; ARGV: now, then message id and receipt token
-- pairs. Deletes each message whose receipt is current; a message already
-- gone counts as deleted. Answers the ids whose receipt is stale (the
-- message was received again since).
local p = KEYS[1]
local now = tonumber(ARGV[1])
local a = attrs(p)
if not a.created_ms then return redis.error_reply('NOQUEUE') end
local stale = {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  local rc = redis.call('HGET', p .. ':count', id)
  if not rc then
    if redis.call('HEXISTS', p .. ':msgs', id) == 1 then table.insert(stale, id) end
  elseif rc ~= ARGV[i + 1] then
    table.insert(stale, id)
  else
    local g = remove(p, a, id)
    if g and redis.call('EXISTS', p .. ':g:' .. g) == 1 then
      if redis.call('HINCRBY', p .. ':locks', g, -1) <= 0 then
        redis.call('HDEL', p .. ':locks', g)
        redis.call('ZADD', p .. ':groups', now, g)
      end
    end
  end
end
return stale
