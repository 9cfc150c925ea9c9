-- forget: drop workers not seen since a cutoff from the registry (and their groups).
--
-- KEYS[1]  the worker registry prefix "<ns>:{w}:" (keys: see register.lua)
-- ARGV[1]  cutoff (ms): workers last seen before it are forgotten
-- Returns how many workers were forgotten.

local prefix = KEYS[1]
local gone = redis.call('ZRANGEBYSCORE', prefix .. 'seen', '-inf', '(' .. ARGV[1])
for _, worker in ipairs(gone) do
  local raw = redis.call('HGET', prefix .. 'workers', worker)
  if raw then
    redis.call('ZREM', prefix .. 'group:' .. cjson.decode(raw).g, worker)
  end
  redis.call('HDEL', prefix .. 'workers', worker)
  redis.call('ZREM', prefix .. 'seen', worker)
end
return #gone
