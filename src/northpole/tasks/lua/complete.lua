-- complete: record the success of held tasks (IN_PROGRESS -> COMPLETED), many at once.
--
-- KEYS[1]  partition prefix "<ns>:{p<N>}:": writes t:<id>, leases, holders, depth, dur,
--          the indexes of released dependents here; records follow-ups in outbox.
-- ARGV[1]  partition number        ARGV[2]  now (ms)
-- ARGV[3]  completions a type's mean processing time is taken over
-- ARGV[4]  number of completions C, then C groups: id, worker, fence, has result ("0"/"1"),
--          result
-- Returns {results, follow-ups}; results[i] = {code, record, events} for completion i, code
-- "ok", "missing" (no such task) or "stale" (not held by that worker under that fence;
-- the record is returned so the error can say why). An ASSIGNED task passes through
-- IN_PROGRESS, started when it was assigned. Dependents are released (here at once,
-- elsewhere by follow-up "r").

local window = tonumber(ARGV[3])
local results, follow = {}, {}
for i = 0, tonumber(ARGV[4]) - 1 do
  local id, worker, fence = ARGV[5 + 5 * i], ARGV[6 + 5 * i], ARGV[7 + 5 * i]
  local result = false
  if ARGV[8 + 5 * i] == '1' then
    result = ARGV[9 + 5 * i]
  end
  local t = load(id)
  if not t then
    results[#results + 1] = {'missing', {}, {}}
  elseif not running(t.s) or t.w ~= worker or t.f ~= fence then
    results[#results + 1] = {'stale', flat(t), {}}
  else
    local events = {}
    local began = tonumber(t.st or '')
    if t.s == 'ASSIGNED' then
      began = tonumber(t.cl or t.u)
      transit(t, {s = 'IN_PROGRESS', st = t.u, u = ARGV[2]}, nil, events)
    end
    transit(t, {s = 'COMPLETED', w = false, l = false, fi = ARGV[2], u = ARGV[2], re = result},
      nil, events)
    if began then
      local dur = PFX .. 'dur'
      local samples = tonumber(redis.call('HGET', dur, t.y .. '#n') or '0')
      local mean = tonumber(redis.call('HGET', dur, t.y) or '0')
      local ms = math.max(0, NOW - began)
      mean = mean + (ms - mean) / math.min(samples + 1, window)
      redis.call('HSET', dur, t.y, string.format('%.17g', mean), t.y .. '#n', fmt(samples + 1))
    end
    release(id, follow)
    results[#results + 1] = {'ok', {}, events}
  end
end
return {results, follow}
