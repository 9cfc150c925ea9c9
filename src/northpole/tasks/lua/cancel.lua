-- cancel: fail a PENDING or running task with reason cancelled, and its dependents.
--
-- KEYS[1]  partition prefix "<ns>:{p<N>}:": writes t:<id>, the indexes, depth, holders;
--          fails dependents here, records follow-ups in outbox.
-- ARGV[1]  partition number        ARGV[2]  now (ms)        ARGV[3]  task id
-- Returns {code, record, events, follow-ups}; code "ok", "missing" or "illegal" (the task
-- is already final; then its record).

local t = load(ARGV[3])
if not t then
  return {'missing', {}, {}, {}}
end
if t.s ~= 'PENDING' and not running(t.s) then
  return {'illegal', flat(t), {}, {}}
end
local events, follow = {}, {}
transit(t, {s = 'FAILED', w = false, l = false, fi = ARGV[2], u = ARGV[2], e = 'cancelled'},
  'cancelled', events)
cascade({t.id}, events, follow)
return {'ok', {}, events, follow}
