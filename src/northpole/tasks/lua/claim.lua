-- claim: assign up to n claimable tasks of this partition to a worker (PENDING -> ASSIGNED).
--
-- KEYS[1]  partition prefix "<ns>:{p<N>}:": reads ready:<type>, types; writes t:<id>,
--          leases, holders, depth, the state indexes (and promotes due delayed tasks).
-- ARGV[1]  partition number        ARGV[2]  now (ms)        ARGV[3]  n
-- ARGV[4]  lease (ms)              ARGV[5]  worker id
-- ARGV[6]  number of task types K, then K types (none: every type)
-- Returns {records, events}: each record {field, value, ...} after the assignment, in
-- claim order. A task past its deadline is left for the sweeper to expire.
--
-- The index writes are batched: one ZREM per queue, one ZADD of leases, one HINCRBY per
-- counter for the whole call.

promote()
local n = tonumber(ARGV[3])
local lease_until = fmt(NOW + tonumber(ARGV[4]))
local worker = ARGV[5]
local types = {}
for i = 1, tonumber(ARGV[6]) do
  types[i] = ARGV[6 + i]
end
local records, events = {}, {}
if n <= 0 then
  return {records, events}
end
local removed, rorder, counts, corder, leases = {}, {}, {}, {}, {}
local function drop(key, id)
  local r = removed[key]
  if not r then
    r = {}
    removed[key] = r
    rorder[#rorder + 1] = key
  end
  r[#r + 1] = id
end
local function bump(field, delta)
  if not counts[field] then
    counts[field] = 0
    corder[#corder + 1] = field
  end
  counts[field] = counts[field] + delta
end
for _, head in ipairs(heads(queues(types), n + 16)) do
  local id = head[2]
  local raw = redis.call('HGETALL', tkey(id))
  local t = {}
  for i = 1, #raw, 2 do
    t[raw[i]] = raw[i + 1]
  end
  if t.s == 'PENDING' and not (t.dl and tonumber(t.dl) <= NOW) then
    local fence, attempts = fmt(tonumber(t.f) + 1), fmt(tonumber(t.n) + 1)
    redis.call('HSET', tkey(id), 's', 'ASSIGNED', 'w', worker, 'l', lease_until, 'f', fence,
      'n', attempts, 'u', ARGV[2], 'cl', ARGV[2])
    drop(PFX .. 'ready:' .. t.y, id)
    drop(PFX .. 'pend:' .. t.y, id)
    leases[#leases + 1] = lease_until
    leases[#leases + 1] = id
    bump('PENDING|' .. t.p .. '|' .. t.y, -1)
    bump('ASSIGNED|' .. t.p .. '|' .. t.y, 1)
    t.s, t.w, t.l, t.f, t.n, t.u, t.cl = 'ASSIGNED', worker, lease_until, fence, attempts,
      ARGV[2], ARGV[2]
    local record = {}
    for field, value in pairs(t) do
      record[#record + 1] = field
      record[#record + 1] = value
    end
    records[#records + 1] = record
    events[#events + 1] = {id, t.g, t.y, 'PENDING', 'ASSIGNED', ARGV[2], '', attempts, t.st or ''}
    if #records >= n then
      break
    end
  end
end
for _, key in ipairs(rorder) do
  local r = removed[key]
  for first = 1, #r, 1000 do
    redis.call('ZREM', key, unpack(r, first, math.min(first + 999, #r)))
  end
end
for first = 1, #leases, 1000 do
  redis.call('ZADD', PFX .. 'leases', unpack(leases, first, math.min(first + 999, #leases)))
end
if #records > 0 then
  redis.call('HINCRBY', PFX .. 'holders', worker, #records)
end
for _, field in ipairs(corder) do
  local left = redis.call('HINCRBY', PFX .. 'depth', field, counts[field])
  if left <= 0 then
    redis.call('HDEL', PFX .. 'depth', field)
  end
end
return {records, events}
