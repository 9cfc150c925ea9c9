-- locate: write task id -> partition entries into one directory bucket, reporting clashes.
--
-- KEYS[1]  a directory bucket "<ns>:{d<B>}:loc"   HASH   task id -> partition
-- ARGV[1]  "set" or "undo"
-- ARGV[2]  JSON array of strings:
--          set:  [id, partition, id, partition, ...]: write every entry; returns the flat
--                [id, old partition, ...] of the ids that were already there (their entries
--                are overwritten too, so the caller can put them back with "undo")
--          undo: [id, old partition or "", ...]: restore entries ("" removes the id)
-- Returns the clashes of "set"; "undo" returns {}.

local pairs_ = cjson.decode(ARGV[2])
local key = KEYS[1]
if ARGV[1] == 'undo' then
  for i = 1, #pairs_, 2 do
    if pairs_[i + 1] == '' then
      redis.call('HDEL', key, pairs_[i])
    else
      redis.call('HSET', key, pairs_[i], pairs_[i + 1])
    end
  end
  return {}
end
local ids = {}
for i = 1, #pairs_, 2 do
  ids[#ids + 1] = pairs_[i]
end
local old = redis.call('HMGET', key, unpack(ids))
local clashes = {}
for i, value in ipairs(old) do
  if value then
    clashes[#clashes + 1] = ids[i]
    clashes[#clashes + 1] = value
  end
end
redis.call('HSET', key, unpack(pairs_))
return clashes
