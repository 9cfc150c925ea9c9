-- register: record a worker as seen now and return the members of its group.
--
-- KEYS[1]  the worker registry prefix "<ns>:{w}:":
--   workers        HASH   worker -> JSON {"g": group, "t": types (JSON text), "c": concurrency,
--                         "f": first seen ms, "l": last seen ms} (numbers as strings)
--   seen           ZSET   worker -> last seen ms
--   group:<group>  ZSET   the group's workers -> last seen ms
-- ARGV[1]  now (ms)        ARGV[2]  worker id        ARGV[3]  group
-- ARGV[4]  task types (JSON array text, sorted)
-- ARGV[5]  concurrency, or "" to keep the known one (1 for a new worker)
-- Returns the group's worker ids, sorted.

local prefix = KEYS[1]
local now, worker, group = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local raw = redis.call('HGET', prefix .. 'workers', worker)
local info
if raw then
  info = cjson.decode(raw)
  if info.g ~= group then
    redis.call('ZREM', prefix .. 'group:' .. info.g, worker)
  end
  if tonumber(info.l) > now then
    now = tonumber(info.l)
  end
else
  info = {f = ARGV[1], c = '1'}
end
info.g = group
info.t = ARGV[4]
info.l = string.format('%d', now)
if ARGV[5] ~= '' then
  info.c = ARGV[5]
end
redis.call('HSET', prefix .. 'workers', worker, cjson.encode(info))
redis.call('ZADD', prefix .. 'seen', info.l, worker)
redis.call('ZADD', prefix .. 'group:' .. group, info.l, worker)
return redis.call('ZRANGE', prefix .. 'group:' .. group, 0, -1)
