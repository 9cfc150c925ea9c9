-- submit: store new tasks of this partition (records built and checked by the caller).
--
-- KEYS[1]  partition prefix "<ns>:{p<N>}:" (keys: see _lib.lua): writes t:<id>, wait:<id>,
--          deps:<dep> of dependencies in this partition, types, depth, the state indexes.
-- ARGV[1]  partition number        ARGV[2]  now (ms)        ARGV[3]  number of tasks T
-- then per task:
--   id, F, F field/value pairs (the whole record),
--   W, W dependency ids not COMPLETED when the caller read them (PENDING tasks only),
--   L, L dependency ids that live in this partition (edges registered here)
-- Returns {"exists", id} (and writes nothing) if a task id is already stored, else
-- {"ok", events, follow-ups}: a PENDING task whose dependency here turned FAILED or EXPIRED
-- since the caller read it is failed here (events), with its cascade.

local count_tasks = tonumber(ARGV[3])
local tasks = {}
local pos = 4
for i = 1, count_tasks do
  local task = {id = ARGV[pos]}
  local nfields = tonumber(ARGV[pos + 1])
  task.fields = {}
  for j = 0, 2 * nfields - 1 do
    task.fields[#task.fields + 1] = ARGV[pos + 2 + j]
  end
  pos = pos + 2 + 2 * nfields
  local nwait = tonumber(ARGV[pos])
  task.wait = {}
  for j = 1, nwait do
    task.wait[j] = ARGV[pos + j]
  end
  pos = pos + 1 + nwait
  local nlocal = tonumber(ARGV[pos])
  task.deps = {}
  for j = 1, nlocal do
    task.deps[j] = ARGV[pos + j]
  end
  pos = pos + 1 + nlocal
  tasks[i] = task
end

for _, task in ipairs(tasks) do
  if redis.call('EXISTS', tkey(task.id)) == 1 then
    return {'exists', task.id}
  end
end

for _, task in ipairs(tasks) do
  redis.call('HSET', tkey(task.id), unpack(task.fields))
  if #task.wait > 0 then
    redis.call('SADD', PFX .. 'wait:' .. task.id, unpack(task.wait))
  end
end

local fixes = {}
for _, task in ipairs(tasks) do
  for _, dep in ipairs(task.deps) do
    redis.call('SADD', PFX .. 'deps:' .. dep, task.id .. '|' .. PART)
    local state = redis.call('HGET', tkey(dep), 's')
    if state == 'COMPLETED' then
      redis.call('SREM', PFX .. 'wait:' .. task.id, dep)
    elseif state == 'FAILED' or state == 'EXPIRED' then
      fixes[#fixes + 1] = {task.id, dep}
    end
  end
end

for _, task in ipairs(tasks) do
  local t = load(task.id)
  redis.call('SADD', PFX .. 'types', t.y)
  index(t)
  count(t, 1)
end

local events, follow = {}, {}
for _, fix in ipairs(fixes) do
  local c = load(fix[1])
  if c.s == 'PENDING' then
    fail_dependent(c, fix[2], events)
    cascade({fix[1]}, events, follow)
  end
end
return {'ok', events, follow}
