-- submit: store new tasks of this partition (records built and checked by the caller).
--
-- KEYS[1]  partition prefix "<ns>:{p<N>}:" (keys: see _lib.lua): writes t:<id>, wait:<id>,
--          deps:<dep> of dependencies in this partition, types, depth, the state indexes.
-- ARGV[1]  partition number        ARGV[2]  now (ms)
-- ARGV[3]  the tasks as one JSON array (every value a string), one item per task:
--          [id, [field, value, ...] (the whole record: 9 fixed pairs first, in the order of
--           redis_codec.HEAD_FIELDS, then the optional ones; a is absent when it equals c),
--           [dependency ids not COMPLETED when the caller read them] (PENDING tasks only),
--           [dependency ids that live in this partition] (edges registered here)]
-- Returns {"exists", id} (and writes nothing) if a task id is already stored, else
-- {"ok", events, follow-ups}: a PENDING task whose dependency here turned FAILED or EXPIRED
-- since the caller read it is failed here (events), with its cascade.
--
-- Publishes on the partition's wake channel if a task became claimable.
-- The index writes are batched: one ZADD per queue and one HINCRBY per depth counter for
-- the whole call, not one per task.

local items = cjson.decode(ARGV[3])

-- One EXISTS per 1,000 records (Lua's unpack has a limit); the one stored id is looked
-- for only when there is one.
local tkeys = {}
for i, item in ipairs(items) do
  tkeys[i] = tkey(item[1])
end
for first = 1, #tkeys, 1000 do
  local last = math.min(first + 999, #tkeys)
  if redis.call('EXISTS', unpack(tkeys, first, last)) > 0 then
    for i = first, last do
      if redis.call('EXISTS', tkeys[i]) == 1 then
        return {'exists', items[i][1]}
      end
    end
  end
end

local tasks = {}
for i, item in ipairs(items) do
  local id, fields, wait = item[1], item[2], item[3]
  redis.call('HSET', tkeys[i], unpack(fields))
  -- y, p, s, c and sk by position (redis_codec.HEAD_FIELDS); a and dl among the optional
  -- pairs (a absent: c).
  local t = {id = id, nwait = #wait, y = fields[6], p = fields[8], s = fields[14],
    a = fields[16], sk = fields[18]}
  for j = 19, #fields, 2 do
    local name = fields[j]
    if name == 'dl' then
      t.dl = fields[j + 1]
    elseif name == 'a' then
      t.a = fields[j + 1]
    end
  end
  if #wait > 0 then
    redis.call('SADD', PFX .. 'wait:' .. id, unpack(wait))
  end
  tasks[i] = t
end

local fixes = {}
for i, item in ipairs(items) do
  local t = tasks[i]
  for _, dep in ipairs(item[4]) do
    redis.call('SADD', PFX .. 'deps:' .. dep, t.id .. '|' .. PART)
    local state = redis.call('HGET', tkey(dep), 's')
    if state == 'COMPLETED' then
      t.nwait = t.nwait - redis.call('SREM', PFX .. 'wait:' .. t.id, dep)
    elseif state == 'FAILED' or state == 'EXPIRED' then
      fixes[#fixes + 1] = {t.id, dep}
    end
  end
end

-- Index: gather the members of each sorted set and the counter deltas, then write them.
local zsets, zorder, types = {}, {}, {}
local function zadd(key, score, member)
  local z = zsets[key]
  if not z then
    z = {}
    zsets[key] = z
    zorder[#zorder + 1] = key
  end
  z[#z + 1] = score
  z[#z + 1] = member
end
for _, t in ipairs(tasks) do
  if t.s == 'PENDING' then
    if t.nwait <= 0 then
      if tonumber(t.a) <= NOW then
        zadd(PFX .. 'ready:' .. t.y, t.sk, t.id)
        wake()
      else
        zadd(PFX .. 'delayed', t.a, t.id)
      end
    end
    zadd(PFX .. 'pend:' .. t.y, t.a, t.id)
    if t.dl then
      zadd(PFX .. 'deadlines', t.dl, t.id)
    end
  end
  depth_add(t.s .. '|' .. t.p .. '|' .. t.y, 1)
  if not types[t.y] then
    types[t.y] = true
    redis.call('SADD', PFX .. 'types', t.y)
  end
end
for _, key in ipairs(zorder) do
  local z = zsets[key]
  for first = 1, #z, 1000 do
    redis.call('ZADD', key, unpack(z, first, math.min(first + 999, #z)))
  end
end
depth_flush()

local events, follow = {}, {}
for _, fix in ipairs(fixes) do
  local c = load(fix[1])
  if c.s == 'PENDING' then
    fail_dependent(c, fix[2], events)
    cascade({fix[1]}, events, follow)
  end
end
return {'ok', events, follow}
