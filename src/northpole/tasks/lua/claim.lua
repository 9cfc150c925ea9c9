-- claim: assign up to n claimable tasks of this partition to a worker (PENDING -> ASSIGNED).
--
-- KEYS[1]  partition prefix "<ns>:{p<N>}:": reads ready:<type>, types; writes t:<id>,
--          leases, holders, depth, the state indexes (and promotes due delayed tasks).
-- ARGV[1]  partition number        ARGV[2]  now (ms)        ARGV[3]  n
-- ARGV[4]  lease (ms)              ARGV[5]  worker id
-- ARGV[6]  number of task types K, then K types (none: every type)
-- Returns the claimed records in claim order, each {field, value, ...} as read BEFORE the
-- assignment: the assignment changes exactly s=ASSIGNED, w=worker, l=now+lease, f=f+1,
-- n=n+1, u=cl=now, which the caller applies (redis_claim.assigned), as it builds the
-- PENDING -> ASSIGNED events itself. Nothing is re-encoded here: the reply is HGETALL's.
-- A task past its deadline is left for the sweeper to expire.
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
local records = {}
if n <= 0 then
  return records
end
local removed, rorder, leases = {}, {}, {}
local function drop(key, id)
  local r = removed[key]
  if not r then
    r = {}
    removed[key] = r
    rorder[#rorder + 1] = key
  end
  r[#r + 1] = id
end
for _, head in ipairs(heads(queues(types), n + 16)) do
  local id = head[2]
  local key = tkey(id)
  local raw = redis.call('HGETALL', key)
  local s, dl, f, nn, y, p = nil, nil, '0', '0', nil, nil  -- f and n absent: 0 (load)
  for i = 1, #raw, 2 do
    local field = raw[i]
    if field == 's' then
      s = raw[i + 1]
    elseif field == 'f' then
      f = raw[i + 1]
    elseif field == 'n' then
      nn = raw[i + 1]
    elseif field == 'y' then
      y = raw[i + 1]
    elseif field == 'p' then
      p = raw[i + 1]
    elseif field == 'dl' then
      dl = raw[i + 1]
    end
  end
  if s == 'PENDING' and not (dl and tonumber(dl) <= NOW) then
    redis.call('HSET', key, 's', 'ASSIGNED', 'w', worker, 'l', lease_until,
      'f', fmt(tonumber(f) + 1), 'n', fmt(tonumber(nn) + 1), 'u', ARGV[2], 'cl', ARGV[2])
    drop(PFX .. 'ready:' .. y, id)
    drop(PFX .. 'pend:' .. y, id)
    leases[#leases + 1] = lease_until
    leases[#leases + 1] = id
    depth_add('PENDING|' .. p .. '|' .. y, -1)
    depth_add('ASSIGNED|' .. p .. '|' .. y, 1)
    records[#records + 1] = raw
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
depth_flush()
return records
