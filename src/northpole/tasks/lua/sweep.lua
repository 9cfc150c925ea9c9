-- sweep: apply deadlines and reclaim expired leases in this partition (safe concurrently).
--
-- KEYS[1]  partition prefix "<ns>:{p<N>}:": reads deadlines, writes t:<id>, the indexes,
--          depth, holders; fails dependents here, records follow-ups in outbox.
-- ARGV[1]  partition number        ARGV[2]  now (ms)        ARGV[3]  aging (ms)
-- ARGV[4]  number of leases L, then L triples id, fence, retry delay (ms) as sweep_scan
--          found them (the delay drawn by the caller's retry policy)
-- Returns {events, follow-ups}, in this order: running tasks past their deadline FAILED
-- (deadline_exceeded), expired leases turned into failed attempts (lease_expired; retried
-- if retries are left), PENDING tasks past their deadline EXPIRED, then the cascades.
-- Every change re-checks the task first, so a second sweeper applies nothing twice.

local events, follow, ended = {}, {}, {}
local due = redis.call('ZRANGEBYSCORE', PFX .. 'deadlines', '-inf', ARGV[2])
table.sort(due, by_id)
local tasks = {}
for _, id in ipairs(due) do
  tasks[id] = load(id)
end
for _, id in ipairs(due) do
  local t = tasks[id]
  if t and running(t.s) then
    transit(t, {s = 'FAILED', w = false, l = false, fi = ARGV[2], u = ARGV[2],
      e = 'deadline_exceeded'}, 'deadline_exceeded', events)
    ended[#ended + 1] = id
  end
end
local leases = {}
for i = 0, tonumber(ARGV[4]) - 1 do
  local t = load(ARGV[5 + 3 * i])
  if t and running(t.s) and t.f == ARGV[6 + 3 * i] and tonumber(t.l) < NOW then
    t.delay = tonumber(ARGV[7 + 3 * i])
    leases[#leases + 1] = t
  end
end
table.sort(leases, function(a, b)
  if a.l ~= b.l then
    return tonumber(a.l) < tonumber(b.l)
  end
  return by_id(a.id, b.id)
end)
for _, t in ipairs(leases) do
  local err = 'lease_expired: worker ' .. t.w .. ' let its lease run out'
  if tonumber(t.rc) < tonumber(t.r) then
    local available = NOW + math.max(0, t.delay)
    transit(t, {s = 'PENDING', rc = fmt(tonumber(t.rc) + 1), a = fmt(available),
      sk = fmt(available - tonumber(t.p) * tonumber(ARGV[3])), w = false, l = false,
      st = false, u = ARGV[2], e = err}, 'lease_expired', events)
  else
    transit(t, {s = 'FAILED', w = false, l = false, fi = ARGV[2], u = ARGV[2], e = err},
      'retries_exhausted', events)
    ended[#ended + 1] = t.id
  end
end
for _, id in ipairs(due) do
  local t = load(id)
  if t and t.s == 'PENDING' and tonumber(t.dl) <= NOW then
    transit(t, {s = 'EXPIRED', fi = ARGV[2], u = ARGV[2]}, 'deadline_exceeded', events)
    ended[#ended + 1] = id
  end
end
cascade(ended, events, follow)
return {events, follow}
