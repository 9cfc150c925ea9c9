-- link: register dependents from other partitions on tasks of this partition.
--
-- KEYS[1]  partition prefix "<ns>:{p<N>}:": reads t:<parent>, adds to deps:<parent>,
--          records follow-ups in outbox.
-- ARGV[1]  partition number        ARGV[2]  now (ms)        ARGV[3]  number of links L
-- then L triples: parent id (here), child id, child's partition
-- Returns the follow-ups owed to the children's partitions, {kind, partition, child,
-- parent} each: "r" (release) for a parent already COMPLETED, "f" (fail) for one
-- FAILED or EXPIRED. A parent still running or PENDING will owe them when it ends.

local follow = {}
local n = tonumber(ARGV[3])
for i = 0, n - 1 do
  local parent, child, partition = ARGV[4 + 3 * i], ARGV[5 + 3 * i], ARGV[6 + 3 * i]
  redis.call('SADD', PFX .. 'deps:' .. parent, child .. '|' .. partition)
  local state = redis.call('HGET', tkey(parent), 's')
  if state == 'COMPLETED' then
    owe('r', partition, child, parent, follow)
  elseif state == 'FAILED' or state == 'EXPIRED' then
    owe('f', partition, child, parent, follow)
  end
end
return follow
