-- Shared helpers, prepended to every partition script (see redis_scripts.py).
--
-- KEYS[1]  the partition prefix "<ns>:{p<N>}:"; every key below is built from it
--          and so lives in the partition's slot:
--   t:<id>            HASH   the task record (fields in redis_keys.FIELDS; absent = None,
--                            or the default for n, rc, f, u, a: see load)
--   ready:<type>      ZSET   claimable PENDING tasks (no waiting dependency, available), by sk
--   delayed           ZSET   PENDING tasks not yet available (backoff), by available_ms
--   pend:<type>       ZSET   every PENDING task, by available_ms
--   deadlines         ZSET   unfinished tasks with a deadline, by deadline_ms
--   leases            ZSET   ASSIGNED/IN_PROGRESS tasks, by lease_until_ms
--   holders           HASH   worker -> tasks it holds in this partition
--   deps:<id>         SET    "<child id>|<child partition>" of the task's dependents
--   wait:<id>         SET    dependency ids of the task that are not COMPLETED yet
--   depth             HASH   "<state>|<priority>|<type>" -> count
--   dur               HASH   <type> -> mean processing ms, <type>#n -> samples
--   types             SET    task types seen
--   outbox            HASH   "<kind>|<partition>|<child>|<parent>" -> ms: follow-ups owed
--                            to other partitions (kind r: release, f: fail)
--   wake              Pub/Sub channel: a message (the partition number) when a call made
--                            tasks claimable, at most one per call (redis_wake.py)
-- ARGV[1]  this partition's number; ARGV[2] now (Unix ms). Scripts document the rest.
--
-- Ids and every integer travel as decimal strings (task ids are 63-bit: a Lua number,
-- a double, would round them); arithmetic is done on numbers below 2^53 only.

local PFX = KEYS[1]
local PART = ARGV[1]
local NOW = tonumber(ARGV[2])

local function fmt(n)
  return string.format('%d', n)
end

local function tkey(id)
  return PFX .. 't:' .. id
end

-- Tell waiting claimers that tasks became claimable here (once per call).
local WOKEN = false
local function wake()
  if not WOKEN then
    WOKEN = true
    redis.call('PUBLISH', PFX .. 'wake', PART)
  end
end

-- Return the record of a task as a table of fields (plus .id), or nil. Fields at their
-- default are not stored (redis_codec.DEFAULTED): attempts, retry count and fence 0,
-- updated and available times the creation time; they are filled in here.
local function load(id)
  local raw = redis.call('HGETALL', tkey(id))
  if #raw == 0 then
    return nil
  end
  local t = {}
  for i = 1, #raw, 2 do
    t[raw[i]] = raw[i + 1]
  end
  t.id = id
  t.n = t.n or '0'
  t.rc = t.rc or '0'
  t.f = t.f or '0'
  t.u = t.u or t.c
  t.a = t.a or t.c
  return t
end

-- The record as a flat reply: {id, field, value, ...}.
local function flat(t)
  return redis.call('HGETALL', tkey(t.id))
end

local function running(state)
  return state == 'ASSIGNED' or state == 'IN_PROGRESS'
end

local function count(t, delta)
  local field = t.s .. '|' .. t.p .. '|' .. t.y
  local n = redis.call('HINCRBY', PFX .. 'depth', field, delta)
  if n <= 0 then
    redis.call('HDEL', PFX .. 'depth', field)
  end
end

-- Depth counter deltas gathered over a whole call (depth_add), written once at its end
-- (depth_flush): one HINCRBY per counter instead of one per task.
local DEPTH, DEPTH_ORDER = {}, {}
local function depth_add(field, delta)
  if not DEPTH[field] then
    DEPTH[field] = 0
    DEPTH_ORDER[#DEPTH_ORDER + 1] = field
  end
  DEPTH[field] = DEPTH[field] + delta
end

local function depth_flush()
  for _, field in ipairs(DEPTH_ORDER) do
    local left = redis.call('HINCRBY', PFX .. 'depth', field, DEPTH[field])
    if left <= 0 then
      redis.call('HDEL', PFX .. 'depth', field)
    end
  end
end

local function hold(worker, delta)
  local n = redis.call('HINCRBY', PFX .. 'holders', worker, delta)
  if n <= 0 then
    redis.call('HDEL', PFX .. 'holders', worker)
  end
end

-- Take the task out of the indexes of its current state.
local function unindex(t)
  if t.s == 'PENDING' then
    redis.call('ZREM', PFX .. 'ready:' .. t.y, t.id)
    redis.call('ZREM', PFX .. 'delayed', t.id)
    redis.call('ZREM', PFX .. 'pend:' .. t.y, t.id)
  elseif running(t.s) then
    redis.call('ZREM', PFX .. 'leases', t.id)
    hold(t.w, -1)
  end
  if t.dl then
    redis.call('ZREM', PFX .. 'deadlines', t.id)
  end
end

-- Put the task into the indexes of its current state.
local function index(t)
  if t.s == 'PENDING' then
    if redis.call('SCARD', PFX .. 'wait:' .. t.id) == 0 then
      if tonumber(t.a) <= NOW then
        redis.call('ZADD', PFX .. 'ready:' .. t.y, t.sk, t.id)
        wake()
      else
        redis.call('ZADD', PFX .. 'delayed', t.a, t.id)
      end
    end
    redis.call('ZADD', PFX .. 'pend:' .. t.y, t.a, t.id)
  elseif running(t.s) then
    redis.call('ZADD', PFX .. 'leases', t.l, t.id)
    hold(t.w, 1)
  end
  if t.dl and (t.s == 'PENDING' or running(t.s)) then
    redis.call('ZADD', PFX .. 'deadlines', t.dl, t.id)
  end
end

-- One event: {id, gift, type, old state, new state, at, reason, attempt, started}.
local function event(old_state, old_started, t, reason)
  return {t.id, t.g, t.y, old_state, t.s, t.u, reason or '', t.n, t.st or old_started or ''}
end

-- Apply `changes` (field -> string, or false to clear) to task t, keep every index and
-- counter right, append the event to `events`, and return the new record.
local function transit(t, changes, reason, events)
  local old_state, old_started = t.s, t.st
  unindex(t)
  count(t, -1)
  local set, del = {}, {}
  for field, value in pairs(changes) do
    if value then
      set[#set + 1] = field
      set[#set + 1] = value
      t[field] = value
    else
      del[#del + 1] = field
      t[field] = nil
    end
  end
  if #set > 0 then
    redis.call('HSET', tkey(t.id), unpack(set))
  end
  if #del > 0 then
    redis.call('HDEL', tkey(t.id), unpack(del))
  end
  index(t)
  count(t, 1)
  if events then
    events[#events + 1] = event(old_state, old_started, t, reason)
  end
  return t
end

local function split2(s)
  local a, b = string.match(s, '^([^|]*)|(.*)$')
  return a, b
end

-- Order decimal ids numerically (shorter first, then by digits).
local function by_id(a, b)
  if #a ~= #b then
    return #a < #b
  end
  return a < b
end

-- Record a follow-up owed to another partition; return it as a reply item.
local function owe(kind, partition, child, parent, follow)
  redis.call('HSET', PFX .. 'outbox', kind .. '|' .. partition .. '|' .. child .. '|' .. parent,
    fmt(NOW))
  follow[#follow + 1] = {kind, partition, child, parent}
end

-- PENDING -> FAILED with reason dependency_failed.
local function fail_dependent(c, parent, events)
  transit(c, {s = 'FAILED', w = false, l = false, fi = fmt(NOW), u = fmt(NOW),
    e = 'dependency_failed: dependency ' .. parent .. ' failed'}, 'dependency_failed', events)
end

-- Fail the PENDING dependents of `roots` (ids of tasks that ended FAILED or EXPIRED),
-- transitively within this partition; dependents elsewhere become follow-ups.
local function cascade(roots, events, follow)
  local frontier = roots
  while #frontier > 0 do
    local nxt = {}
    table.sort(frontier, by_id)
    for _, parent in ipairs(frontier) do
      local members = redis.call('SMEMBERS', PFX .. 'deps:' .. parent)
      local kids = {}
      for _, m in ipairs(members) do
        local child, partition = split2(m)
        kids[#kids + 1] = child
        kids[child] = partition
      end
      table.sort(kids, by_id)
      for _, child in ipairs(kids) do
        local partition = kids[child]
        if partition == PART then
          local c = load(child)
          if c and c.s == 'PENDING' then
            fail_dependent(c, parent, events)
            nxt[#nxt + 1] = child
          end
        else
          owe('f', partition, child, parent, follow)
        end
      end
    end
    frontier = nxt
  end
end

-- Dependency `parent` of `child` (a task here) is COMPLETED: stop waiting for it.
local function release_one(child, parent)
  if redis.call('SREM', PFX .. 'wait:' .. child, parent) == 1 then
    if redis.call('SCARD', PFX .. 'wait:' .. child) == 0 then
      local c = load(child)
      if c and c.s == 'PENDING' then
        index(c)
      end
    end
  end
end

-- Task `parent` (here) COMPLETED: release its dependents, here or by follow-up.
local function release(parent, follow)
  for _, m in ipairs(redis.call('SMEMBERS', PFX .. 'deps:' .. parent)) do
    local child, partition = split2(m)
    if partition == PART then
      release_one(child, parent)
    else
      owe('r', partition, child, parent, follow)
    end
  end
end

-- Move PENDING tasks whose backoff is over from `delayed` to their ready queues.
local function promote()
  local due = redis.call('ZRANGEBYSCORE', PFX .. 'delayed', '-inf', ARGV[2], 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do
    redis.call('ZREM', PFX .. 'delayed', id)
    local t = load(id)
    if t and t.s == 'PENDING' then
      index(t)
    end
  end
end

-- The ready queues to look at: the given types, or every type seen here.
local function queues(types)
  if #types == 0 then
    types = redis.call('SMEMBERS', PFX .. 'types')
  end
  return types
end

-- Up to `limit` (sk, id) of the ready queues of `types`, smallest sk first.
local function heads(types, limit)
  local all = {}
  if limit <= 0 then
    return all
  end
  for _, ty in ipairs(types) do
    local got = redis.call('ZRANGE', PFX .. 'ready:' .. ty, 0, limit - 1, 'WITHSCORES')
    for i = 1, #got, 2 do
      all[#all + 1] = {tonumber(got[i + 1]), got[i]}
    end
  end
  local function before(a, b)
    if a[1] ~= b[1] then
      return a[1] < b[1]
    end
    return by_id(a[2], b[2])
  end
  -- One queue comes sorted by (sk, id as text), which is claim order unless two ids of one
  -- score differ in length: sort only then, or when several queues are merged.
  local sorted = #types <= 1
  for i = 2, #all do
    if not sorted then
      break
    end
    sorted = not before(all[i], all[i - 1])
  end
  if not sorted then
    table.sort(all, before)
  end
  local out = {}
  for i = 1, math.min(limit, #all) do
    out[i] = all[i]
  end
  return out
end

local function error_reply(code, t)
  if t then
    return {code, flat(t)}
  end
  return {code, {}}
end
