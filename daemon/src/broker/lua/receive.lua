-- KEYS[1] queue prefix; ARGV: now, max, visibility ms (-1: the queue's).
-- Answers [[id, message, receive count, first receive ms], ...]. A message
-- received more often than the redrive policy allows moves to the
-- dead-letter queue instead (when that queue exists); one older than the
-- retention period is removed.
local p = KEYS[1]
local now = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local vis = tonumber(ARGV[3])
local a = attrs(p)
if not a.created_ms then return redis.error_reply('NOQUEUE') end
if vis < 0 then vis = tonumber(a.visibility_ms) end
local maxrc = tonumber(a.max_receive_count or '0')
local dlq = a.dead_letter or ''
local retention = tonumber(a.retention_ms or '345600000')
local out = {}

local function take(id)
  local msg = redis.call('HGET', p .. ':msgs', id)
  if not msg then
    remove(p, a, id)
    return false
  end
  local ok, m = pcall(cjson.decode, msg)
  if ok and type(m) == 'table' and tonumber(m.sent_ms) and now - tonumber(m.sent_ms) > retention then
    remove(p, a, id)
    return false
  end
  local rc = tonumber(redis.call('HGET', p .. ':count', id) or '0') + 1
  if maxrc > 0 and rc > maxrc and dlq ~= '' then
    local dp = 'flint:queue:' .. dlq
    local da = attrs(dp)
    if da.created_ms then
      local group = redis.call('HGET', p .. ':group', id) or id
      remove(p, a, id)
      push(dp, da, id, msg, group, now)
      return false
    end
  end
  redis.call('HSET', p .. ':count', id, rc)
  redis.call('HSETNX', p .. ':first', id, now)
  table.insert(out, { id, msg, rc, redis.call('HGET', p .. ':first', id) })
  return true
end

if a.fifo == '1' then
  local groups = redis.call('ZRANGEBYSCORE', p .. ':groups', '-inf', now, 'LIMIT', 0, max)
  for _, g in ipairs(groups) do
    if #out >= max then break end
    local n = 0
    local later = nil
    local ids = redis.call('ZRANGE', p .. ':g:' .. g, 0, max - #out + 10)
    for _, id in ipairs(ids) do
      if #out >= max then break end
      local at = tonumber(redis.call('HGET', p .. ':at', id) or '0')
      if at > now then
        later = at
        break
      end
      if take(id) then n = n + 1 end
    end
    if redis.call('EXISTS', p .. ':g:' .. g) == 1 then
      if n > 0 then
        -- The group is locked until its batch is deleted or its
        -- visibility timeout runs out.
        redis.call('HSET', p .. ':locks', g, n)
        redis.call('ZADD', p .. ':groups', now + vis, g)
      elseif later then
        redis.call('ZADD', p .. ':groups', later, g)
      end
    end
  end
else
  local ids = redis.call('ZRANGEBYSCORE', p .. ':ready', '-inf', now, 'LIMIT', 0, max + 20)
  for _, id in ipairs(ids) do
    if #out >= max then break end
    if take(id) then redis.call('ZADD', p .. ':ready', now + vis, id) end
  end
end
return out
