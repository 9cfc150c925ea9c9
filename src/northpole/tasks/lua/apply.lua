-- apply: carry out follow-ups another partition owes to tasks of this one (idempotent).
--
-- KEYS[1]  partition prefix "<ns>:{p<N>}:": reads and writes t:<child>, wait:<child> and
--          the indexes; records further follow-ups in outbox.
-- ARGV[1]  partition number        ARGV[2]  now (ms)        ARGV[3]  number of items I
-- then I triples: kind ("r" release: the parent COMPLETED; "f" fail: the parent FAILED or
-- EXPIRED), child id (here), parent id
-- Returns {events, follow-ups}: a release removes the parent from the child's wait set
-- (once) and queues the child when nothing is left; a fail moves a PENDING child to
-- FAILED (dependency_failed) and cascades. Applying an item twice changes nothing more.

local events, follow = {}, {}
local n = tonumber(ARGV[3])
for i = 0, n - 1 do
  local kind, child, parent = ARGV[4 + 3 * i], ARGV[5 + 3 * i], ARGV[6 + 3 * i]
  if kind == 'r' then
    release_one(child, parent)
  else
    local c = load(child)
    if c and c.s == 'PENDING' then
      fail_dependent(c, parent, events)
      cascade({child}, events, follow)
    end
  end
end
return {events, follow}
