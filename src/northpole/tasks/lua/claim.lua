-- claim: assign up to n claimable tasks of this partition to a worker (PENDING -> ASSIGNED).
--
-- KEYS[1]  partition prefix "<ns>:{p<N>}:": reads ready:<type>, types; writes t:<id>,
--          leases, holders, depth, the state indexes (and promotes due delayed tasks).
-- ARGV[1]  partition number        ARGV[2]  now (ms)        ARGV[3]  n
-- ARGV[4]  lease (ms)              ARGV[5]  worker id
-- ARGV[6]  number of task types K, then K types (none: every type)
-- Returns {records, events}: each record {id, field, value, ...} after the assignment, in
-- claim order. A task past its deadline is left for the sweeper to expire.

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
for _, head in ipairs(heads(queues(types), n + 16)) do
  local t = load(head[2])
  if t and t.s == 'PENDING' and not (t.dl and tonumber(t.dl) <= NOW) then
    transit(t, {s = 'ASSIGNED', w = worker, l = lease_until, f = fmt(tonumber(t.f) + 1),
      n = fmt(tonumber(t.n) + 1), u = ARGV[2], cl = ARGV[2]}, nil, events)
    records[#records + 1] = flat(t)
    if #records >= n then
      break
    end
  end
end
return {records, events}
