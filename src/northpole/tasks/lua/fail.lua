-- fail: end the holder's attempt in failure: back to PENDING after a delay, or FAILED.
--
-- KEYS[1]  partition prefix "<ns>:{p<N>}:": writes t:<id>, the indexes, depth, holders;
--          fails dependents here, records follow-ups in outbox.
-- ARGV[1]  partition number        ARGV[2]  now (ms)        ARGV[3]  aging (ms)
-- ARGV[4]  task id                 ARGV[5]  worker id       ARGV[6]  fence
-- ARGV[7]  reason                  ARGV[8]  message
-- ARGV[9]  retry delay in ms (the caller's backoff), or "" for no retry
-- Returns {code, record, events, follow-ups}; code "ok", "missing" or "stale" (then the
-- record). Mirrors transitions.fail_attempt: retried if a delay is given and retries are
-- left, else FAILED (reason retries_exhausted when a retry was wanted) with its cascade.

local id, worker, fence, reason, message, delay = ARGV[4], ARGV[5], ARGV[6], ARGV[7],
  ARGV[8], ARGV[9]
local t = load(id)
if not t then
  return {'missing', {}, {}, {}}
end
if not running(t.s) or t.w ~= worker or t.f ~= fence then
  return {'stale', flat(t), {}, {}}
end
local err = reason
if message ~= '' then
  err = reason .. ': ' .. message
end
local events, follow = {}, {}
if delay ~= '' and tonumber(t.rc) < tonumber(t.r) then
  local available = NOW + math.max(0, tonumber(delay))
  transit(t, {s = 'PENDING', rc = fmt(tonumber(t.rc) + 1), a = fmt(available),
    sk = fmt(available - tonumber(t.p) * tonumber(ARGV[3])), w = false, l = false,
    st = false, u = ARGV[2], e = err}, reason, events)
else
  local final = reason
  if delay ~= '' then
    final = 'retries_exhausted'
  end
  transit(t, {s = 'FAILED', w = false, l = false, fi = ARGV[2], u = ARGV[2], e = err}, final,
    events)
  cascade({id}, events, follow)
end
return {'ok', {}, events, follow}
