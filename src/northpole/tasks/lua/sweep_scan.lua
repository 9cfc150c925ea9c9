-- sweep_scan: what the sweeper may have to do in this partition (reads only).
--
-- KEYS[1]  partition prefix "<ns>:{p<N>}:": reads leases, t:<id>, outbox.
-- ARGV[1]  partition number        ARGV[2]  now (ms)
-- ARGV[3]  outbox grace (ms)       ARGV[4]  most leases to return
-- Returns {leases, owed, due}: leases = {id, fence, retry_count, ...} of tasks whose lease ran
-- out (lease_until < now); owed = {kind, partition, child, parent, ...} of follow-ups
-- recorded more than the grace ago and still not applied; due = how many unfinished tasks
-- have reached their deadline.

local leases = {}
local expired = redis.call('ZRANGEBYSCORE', PFX .. 'leases', '-inf', '(' .. ARGV[2], 'LIMIT', 0,
  tonumber(ARGV[4]))
for _, id in ipairs(expired) do
  local got = redis.call('HMGET', tkey(id), 's', 'f', 'rc')
  if got[1] then
    leases[#leases + 1] = id
    leases[#leases + 1] = got[2] or '0'  -- absent: 0 (see load)
    leases[#leases + 1] = got[3] or '0'
  end
end
local owed = {}
local cutoff = NOW - tonumber(ARGV[3])
local raw = redis.call('HGETALL', PFX .. 'outbox')
for i = 1, #raw, 2 do
  if tonumber(raw[i + 1]) <= cutoff then
    local kind, partition, child, parent = string.match(raw[i], '^(.)|(%d+)|([^|]+)|(.+)$')
    owed[#owed + 1] = kind
    owed[#owed + 1] = partition
    owed[#owed + 1] = child
    owed[#owed + 1] = parent
  end
end
return {leases, owed, redis.call('ZCOUNT', PFX .. 'deadlines', '-inf', ARGV[2])}
