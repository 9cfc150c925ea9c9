-- heartbeat: mark started tasks IN_PROGRESS and extend the leases of the tasks a worker holds.
--
-- KEYS[1]  partition prefix "<ns>:{p<N>}:": writes t:<id>, leases, the indexes, depth.
-- ARGV[1]  partition number        ARGV[2]  now (ms)        ARGV[3]  lease (ms)
-- ARGV[4]  worker id
-- ARGV[5]  number of started pairs S, then S pairs id, fence (ASSIGNED -> IN_PROGRESS)
-- then     number of holding pairs H, then H pairs id, fence
-- Returns {held ids, events}: the listed tasks the worker really holds under the fence it
-- showed (only those get a new lease; the others it must drop).

local worker = ARGV[4]
local lease_until = fmt(NOW + tonumber(ARGV[3]))
local started, shown = {}, {}
local nstarted = tonumber(ARGV[5])
for i = 0, nstarted - 1 do
  started[#started + 1] = {ARGV[6 + 2 * i], ARGV[7 + 2 * i]}
  shown[#shown + 1] = started[#started]
end
local pos = 6 + 2 * nstarted
for i = 0, tonumber(ARGV[pos]) - 1 do
  shown[#shown + 1] = {ARGV[pos + 1 + 2 * i], ARGV[pos + 2 + 2 * i]}
end
local held, tasks = {}, {}
for _, pair in ipairs(shown) do
  local t = tasks[pair[1]] or load(pair[1])
  if t and running(t.s) and t.w == worker and t.f == pair[2] then
    tasks[pair[1]] = t
  end
end
local events = {}
for _, pair in ipairs(started) do
  local t = tasks[pair[1]]
  if t and t.s == 'ASSIGNED' and t.f == pair[2] then
    transit(t, {s = 'IN_PROGRESS', st = ARGV[2], u = ARGV[2]}, nil, events)
  end
end
for id, t in pairs(tasks) do
  redis.call('HSET', tkey(id), 'l', lease_until)
  redis.call('ZADD', PFX .. 'leases', lease_until, id)
  held[#held + 1] = id
end
return {held, events}
