-- KEYS[1] queue prefix; ARGV: "delete" to remove the queue too.
local p = KEYS[1]
local a = attrs(p)
if not a.created_ms then return redis.error_reply('NOQUEUE') end
clear(p, a)
if ARGV[1] == 'delete' then
  redis.call('DEL', p)
  redis.call('SREM', 'flint:queues', string.sub(p, 13))
end
return 1
