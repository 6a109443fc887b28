-- Helpers shared by the queue scripts; each script is this file followed
-- by its own text, run as one EVAL so that it is atomic.
--
-- A queue NAME keeps its keys under the prefix P = "flint:queue:NAME":
--   P            hash: attributes (created_ms, visibility_ms, delay_ms,
--                fifo, content_dedup, dead_letter, max_receive_count,
--                retention_ms) and the send counter seq
--   P:msgs       hash: message id -> the message (JSON written by flintd)
--   P:at         hash: message id -> when it is first visible (delay)
--   P:count      hash: message id -> receive count (the receipt's token)
--   P:first      hash: message id -> first receive (ms)
--   P:ready      zset (standard): message id -> when it is visible next
--   P:group      hash (FIFO): message id -> its message group
--   P:g:GROUP    zset (FIFO): message id -> send order
--   P:groups     zset (FIFO): group -> when it can be handed out next
--   P:locks      hash (FIFO): group -> messages of it in flight
--   P:dedup:ID   string (FIFO): message id, for five minutes

local function attrs(p)
  local a = {}
  local kv = redis.call('HGETALL', p)
  for i = 1, #kv, 2 do a[kv[i]] = kv[i + 1] end
  return a
end

-- Adds a message to queue P, visible from `at`.
local function push(p, a, id, msg, group, at)
  local seq = redis.call('HINCRBY', p, 'seq', 1)
  redis.call('HSET', p .. ':msgs', id, msg)
  redis.call('HSET', p .. ':at', id, at)
  if a.fifo == '1' then
    redis.call('HSET', p .. ':group', id, group)
    redis.call('ZADD', p .. ':g:' .. group, seq, id)
    redis.call('ZADD', p .. ':groups', 'NX', at, group)
  else
    redis.call('ZADD', p .. ':ready', at, id)
  end
end

-- Removes a message from queue P; answers its group (FIFO) or nil.
local function remove(p, a, id)
  redis.call('HDEL', p .. ':msgs', id)
  redis.call('HDEL', p .. ':at', id)
  redis.call('HDEL', p .. ':count', id)
  redis.call('HDEL', p .. ':first', id)
  if a.fifo == '1' then
    local g = redis.call('HGET', p .. ':group', id)
    redis.call('HDEL', p .. ':group', id)
    if g then
      redis.call('ZREM', p .. ':g:' .. g, id)
      if redis.call('ZCARD', p .. ':g:' .. g) == 0 then
        redis.call('ZREM', p .. ':groups', g)
        redis.call('HDEL', p .. ':locks', g)
      end
      return g
    end
    return nil
  end
  redis.call('ZREM', p .. ':ready', id)
  return nil
end

local function clear(p, a)
  if a.fifo == '1' then
    for _, g in ipairs(redis.call('ZRANGE', p .. ':groups', 0, -1)) do
      redis.call('DEL', p .. ':g:' .. g)
    end
  end
  redis.call('DEL', p .. ':msgs', p .. ':at', p .. ':count', p .. ':first',
    p .. ':group', p .. ':ready', p .. ':groups', p .. ':locks')
end
