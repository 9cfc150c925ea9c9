-- complete: record the success of held tasks (IN_PROGRESS -> COMPLETED), many at once.
--
-- KEYS[1]  partition prefix "<ns>:{p<N>}:": writes t:<id>, leases, holders, depth, dur,
--          the indexes of released dependents here; records follow-ups in outbox.
-- ARGV[1]  partition number        ARGV[2]  now (ms)
-- ARGV[3]  completions a type's mean processing time is taken over
-- ARGV[4]  the completions as one JSON array of [id, worker, fence, result] (strings;
--          result null for none)
-- Returns {results, follow-ups}; results[i] for completion i is {"ok", gift, type, attempt,
-- started, was assigned ("1" or "0")}, from which the caller builds the events (an
-- ASSIGNED task passes through IN_PROGRESS, started when it was assigned), {"missing"}
-- (no such task) or {"stale", record} (not held by that worker under that fence; the
-- record is returned so the error can say why). Dependents are released (here at once,
-- elsewhere by follow-up "r").
--
-- Each task costs one read and two writes; the indexes, counters and processing times
-- are written once per call.

local window = tonumber(ARGV[3])
local items = cjson.decode(ARGV[4])
local results, follow = {}, {}
local leases, deadlines, held, horder, durs, dorder = {}, {}, {}, {}, {}, {}
for _, item in ipairs(items) do
  local id, worker, fence, result = item[1], item[2], item[3], item[4]
  local key = tkey(id)
  local r = redis.call('HMGET', key, 's', 'w', 'f', 'y', 'p', 'st', 'cl', 'u', 'n', 'dl', 'g')
  local s, w, f, y, p, st, cl, u, n, dl, g = r[1], r[2], r[3] or '0', r[4], r[5], r[6], r[7],
    r[8], r[9] or '0', r[10], r[11]
  if not s then
    results[#results + 1] = {'missing'}
  elseif not running(s) or w ~= worker or f ~= fence then
    results[#results + 1] = {'stale', redis.call('HGETALL', key)}
  else
    local began = tonumber(st or '')
    local was_assigned = '0'
    if s == 'ASSIGNED' then
      began = tonumber(cl or u)
      st = u
      was_assigned = '1'
    end
    st = st or u
    if type(result) == 'string' then
      redis.call('HSET', key, 's', 'COMPLETED', 'fi', ARGV[2], 'u', ARGV[2], 'st', st,
        're', result)
      redis.call('HDEL', key, 'w', 'l')
    else
      redis.call('HSET', key, 's', 'COMPLETED', 'fi', ARGV[2], 'u', ARGV[2], 'st', st)
      redis.call('HDEL', key, 'w', 'l', 're')
    end
    leases[#leases + 1] = id
    if dl then
      deadlines[#deadlines + 1] = id
    end
    if not held[w] then
      held[w] = 0
      horder[#horder + 1] = w
    end
    held[w] = held[w] + 1
    depth_add(s .. '|' .. p .. '|' .. y, -1)
    depth_add('COMPLETED|' .. p .. '|' .. y, 1)
    if began then
      if not durs[y] then
        durs[y] = {}
        dorder[#dorder + 1] = y
      end
      durs[y][#durs[y] + 1] = math.max(0, NOW - began)
    end
    release(id, follow)
    results[#results + 1] = {'ok', g, y, n, st, was_assigned}
  end
end
for first = 1, #leases, 1000 do
  redis.call('ZREM', PFX .. 'leases', unpack(leases, first, math.min(first + 999, #leases)))
end
for first = 1, #deadlines, 1000 do
  redis.call('ZREM', PFX .. 'deadlines',
    unpack(deadlines, first, math.min(first + 999, #deadlines)))
end
for _, w in ipairs(horder) do
  hold(w, -held[w])
end
depth_flush()
local dur = PFX .. 'dur'
for _, y in ipairs(dorder) do
  local got = redis.call('HMGET', dur, y, y .. '#n')
  local mean, samples = tonumber(got[1] or '0'), tonumber(got[2] or '0')
  for _, ms in ipairs(durs[y]) do
    mean = mean + (ms - mean) / math.min(samples + 1, window)
    samples = samples + 1
  end
  redis.call('HSET', dur, y, string.format('%.17g', mean), y .. '#n', fmt(samples))
end
return {results, follow}
