-- peek: the head of this partition's ready queues, and how deep they are.
--
-- KEYS[1]  partition prefix "<ns>:{p<N>}:": reads ready:<type>, types; moves due tasks
--          from delayed to ready:<type>.
-- ARGV[1]  partition number        ARGV[2]  now (ms)        ARGV[3]  limit
-- ARGV[4]  number of task types K, then K types (none: every type)
-- Returns {depth, sk, id, sk, id, ...}: the claimable tasks of those types (depth), and
-- the first `limit` of them in claim order (smallest sched_key first).

promote()
local types = {}
for i = 1, tonumber(ARGV[4]) do
  types[i] = ARGV[4 + i]
end
types = queues(types)
local depth = 0
for _, ty in ipairs(types) do
  depth = depth + redis.call('ZCARD', PFX .. 'ready:' .. ty)
end
local out = {depth}
for _, head in ipairs(heads(types, tonumber(ARGV[3]))) do
  out[#out + 1] = fmt(head[1])
  out[#out + 1] = head[2]
end
return out
