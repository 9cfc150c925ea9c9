-- idempotency: reserve the idempotency keys of a batch, all or none; or release them.
--
-- KEYS[1]  "<ns>:{i}:idem"  HASH idempotency key -> task id
-- ARGV[1]  "reserve" or "release"
-- reserve: then triples key, task id, id it may replace ("" none: a key left by a
--          submit that died before storing its task). If no key is held by another
--          id, maps every key to its id and returns {}; otherwise maps none and
--          returns {key, id holding it, ...} of the keys taken.
-- release: then pairs key, task id; removes each key that still maps to that id and
--          returns how many.

local idem = KEYS[1]
if ARGV[1] == 'release' then
  local removed = 0
  for i = 2, #ARGV, 2 do
    if redis.call('HGET', idem, ARGV[i]) == ARGV[i + 1] then
      removed = removed + redis.call('HDEL', idem, ARGV[i])
    end
  end
  return removed
end
local taken = {}
for i = 2, #ARGV, 3 do
  local holder = redis.call('HGET', idem, ARGV[i])
  if holder and holder ~= ARGV[i + 1] and holder ~= ARGV[i + 2] then
    taken[#taken + 1] = ARGV[i]
    taken[#taken + 1] = holder
  end
end
if #taken == 0 then
  for i = 2, #ARGV, 3 do
    redis.call('HSET', idem, ARGV[i], ARGV[i + 1])
  end
end
return taken
