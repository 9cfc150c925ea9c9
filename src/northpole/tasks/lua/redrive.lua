-- redrive: put a FAILED task back to PENDING with a fresh retry budget.
--
-- KEYS[1]  partition prefix "<ns>:{p<N>}:": writes t:<id>, wait:<id>, the indexes, depth.
-- ARGV[1]  partition number        ARGV[2]  now (ms)        ARGV[3]  aging (ms)
-- ARGV[4]  task id
-- ARGV[5]  a dependency found FAILED or EXPIRED by the caller, or ""
-- ARGV[6]  number of dependencies not COMPLETED W, then W ids (the new wait set)
-- Returns {code, record, events}; code "ok", "missing" or "illegal" (not FAILED). With a
-- failed dependency the task goes PENDING and at once FAILED again (dependency_failed).

local t = load(ARGV[4])
if not t then
  return {'missing', {}, {}}
end
if t.s ~= 'FAILED' then
  return {'illegal', flat(t), {}}
end
local wait = PFX .. 'wait:' .. t.id
redis.call('DEL', wait)
for i = 1, tonumber(ARGV[6]) do
  redis.call('SADD', wait, ARGV[6 + i])
end
local events = {}
transit(t, {s = 'PENDING', rc = '0', a = ARGV[2],
  sk = fmt(NOW - tonumber(t.p) * tonumber(ARGV[3])), fi = false, st = false, u = ARGV[2]},
  'redriven', events)
if ARGV[5] ~= '' then
  fail_dependent(t, ARGV[5], events)
end
return {'ok', flat(t), events}
