"""The Lua scripts of the Redis backend: every write to a run is one script (atomic, one round trip).

``COMMON`` is shared by the write scripts. ``rebuild`` makes a run's summary document from its hash by
concatenation (keys are validated: no quotes or backslashes; values are stored as JSON text, so no JSON
decoding in Lua and numbers keep their exact text) and stamps the run with the vault's next change number
(``INCR rev``, ``ZADD changes``) for the run index. ``publish`` appends the write's change event to the
stream in the same script, so an event exists exactly when its write does. Every write script takes the
events stream (``<prefix>events``) as KEYS[1], which gives ``PREFIX``, and the event payload (or "") as
ARGV[1]. ``pack`` is how a script takes many field/value pairs in one argument.

The scripts are registered on the backend's ``RedisConnection`` together with the blob store's
(``labvault.blobs.redis.BLOB_SCRIPTS``); ``labvault.store.redis.backend`` calls them by name.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from labvault.blobs.redis_connection import FORMAT_VERSION

__all__ = ["BATCH_MEMORY", "COMMON", "EVENTS_MAXLEN", "RUN_SCRIPTS", "pack"]

#: Approximate length the events stream is trimmed to.
EVENTS_MAXLEN = 10_000
#: How long an applied metric batch id is remembered (seconds): far beyond any retry.
BATCH_MEMORY = 3600


def pack(items: Sequence[bytes | str]) -> bytes:
    """A MessagePack array of raw strings (str 32), which the scripts open with ``cmsgpack.unpack``:
    one argument instead of many (redis-py packs every argument separately, Lua unpacks them in C)."""
    out = [struct.pack(">BI", 0xDD, len(items))]
    for item in items:
        data = item.encode() if isinstance(item, str) else item
        out.append(struct.pack(">BI", 0xDB, len(data)))
        out.append(data)
    return b"".join(out)


#: The functions every write script starts with: ``rebuild``, ``hset_pairs``, ``publish`` (see above).
COMMON = """
local PREFIX = string.sub(KEYS[1], 1, #KEYS[1] - 6)
local function rebuild(run_key, summary_key)
  local flat = redis.call('HGETALL', run_key)
  local core, p, t, m, r, rid = {}, {}, {}, {}, {}, nil
  for i = 1, #flat, 2 do
    local f, v = flat[i], flat[i + 1]
    local kind = string.sub(f, 1, 2)
    if kind == 'p:' then p[#p + 1] = '"' .. string.sub(f, 3) .. '":' .. v
    elseif kind == 't:' then t[#t + 1] = '"' .. string.sub(f, 3) .. '":' .. v
    elseif kind == 'm:' then m[#m + 1] = '"' .. string.sub(f, 3) .. '":' .. v
    elseif kind == 'r:' then r[#r + 1] = '"' .. string.sub(f, 3) .. '":' .. v
    else
      core[#core + 1] = '"' .. f .. '":' .. v
      if f == 'id' then rid = string.sub(v, 2, -2) end
    end
  end
  redis.call('SET', summary_key, '{' .. table.concat(core, ',')
    .. ',"params":{' .. table.concat(p, ',') .. '},"tags":{' .. table.concat(t, ',')
    .. '},"metrics":{' .. table.concat(m, ',') .. '},"results":{' .. table.concat(r, ',') .. '}}')
  if rid then redis.call('ZADD', PREFIX .. 'changes', redis.call('INCR', PREFIX .. 'rev'), rid) end
end
local function hset_pairs(key, args, first)
  for i = first, #args, 200 do
    redis.call('HSET', key, unpack(args, i, math.min(i + 199, #args)))
  end
end
local function publish(payload)
  if payload ~= '' then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', '""" + str(EVENTS_MAXLEN) + """', '*', 'e', payload)
  end
end
"""

RUN_SCRIPTS: dict[str, str] = {
    # KEYS: events, index, experiments, meta. ARGV: event, index field, new id, new document.
    # -> {stored document, 1 if this call created it}
    "ensure_experiment": COMMON + """
local id = redis.call('HGET', KEYS[2], ARGV[2])
if id then return {redis.call('HGET', KEYS[3], id), 0} end
redis.call('HSETNX', KEYS[4], 'format', '""" + FORMAT_VERSION + """')
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
publish(ARGV[1])
return {ARGV[4], 1}
""",
    # KEYS: events, experiments, counter, exp runs, run, summary, parent run.
    # ARGV: event head, eid, rid, has parent, packed field/value pairs, event tail; the event is
    # head .. number .. tail. -> the run number; -1 no experiment; -2 no parent run
    "create_run": COMMON + """
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0 then return -1 end
local existing = redis.call('HGET', KEYS[5], 'number')
if existing then return tonumber(existing) end
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[7]) == 0 then return -2 end
local n = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[4], n, ARGV[3])
redis.call('HSET', KEYS[5], 'number', n)
hset_pairs(KEYS[5], cmsgpack.unpack(ARGV[5]), 1)
rebuild(KEYS[5], KEYS[6])
publish(ARGV[1] .. n .. ARGV[6])
return n
""",
    # KEYS: events, run, target hash, summary. ARGV: event, rebuild flag, packed pairs. -> 0 when no run
    "hset": COMMON + """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
hset_pairs(KEYS[3], cmsgpack.unpack(ARGV[3]), 1)
if ARGV[2] == '1' then rebuild(KEYS[2], KEYS[4]) end
publish(ARGV[1])
return 1
""",
    # KEYS: events, run, summary. ARGV: event, packed pairs of (p:key, JSON). Writes nothing when any key
    # holds other text. -> {'missing'} | {'ok'} | {'conflict', field, stored, ...}
    "params": COMMON + """
if redis.call('EXISTS', KEYS[2]) == 0 then return {'missing'} end
local clashes, new = {'conflict'}, {}
local given = cmsgpack.unpack(ARGV[2])
for i = 1, #given, 2 do
  local stored = redis.call('HGET', KEYS[2], given[i])
  if stored then
    if stored ~= given[i + 1] then clashes[#clashes + 1] = given[i]; clashes[#clashes + 1] = stored end
  else
    new[#new + 1] = given[i]; new[#new + 1] = given[i + 1]
  end
end
if #clashes > 1 then return clashes end
if #new > 0 then
  hset_pairs(KEYS[2], new, 1)
  rebuild(KEYS[2], KEYS[3])
end
publish(ARGV[1])
return {'ok'}
""",
    # KEYS: events, run, summary, batches, one metric list per series. ARGV: event, batch id, number of
    # series, then per series: latest field, latest JSON, number of segments, segments...
    # -> 1 applied, 0 applied before (a re-sent batch), -1 no run
    "log_metrics": COMMON + """
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
if redis.call('ZSCORE', KEYS[4], ARGV[2]) then return 0 end
local clock = tonumber(redis.call('TIME')[1])
redis.call('ZADD', KEYS[4], clock, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', clock - """ + str(BATCH_MEMORY) + """)
local pos = 4
for s = 1, tonumber(ARGV[3]) do
  local field, latest, nseg = ARGV[pos], ARGV[pos + 1], tonumber(ARGV[pos + 2])
  pos = pos + 3
  for j = pos, pos + nseg - 1, 100 do
    redis.call('RPUSH', KEYS[4 + s], unpack(ARGV, j, math.min(j + 99, pos + nseg - 1)))
  end
  pos = pos + nseg
  redis.call('HSET', KEYS[2], field, latest)
end
rebuild(KEYS[2], KEYS[3])
publish(ARGV[1])
return 1
""",
    # KEYS: events, experiments, names index, exp runs, counter. ARGV: event, prefix, eid. -> 0 if missing
    "delete_experiment": COMMON + """
local doc = redis.call('HGET', KEYS[2], ARGV[3])
if not doc then return 0 end
local info = cjson.decode(doc)
local runs = redis.call('ZRANGE', KEYS[4], 0, -1)
for _, rid in ipairs(runs) do
  local base = ARGV[2] .. 'run:' .. rid
  for _, f in ipairs(redis.call('HKEYS', base)) do
    if string.sub(f, 1, 2) == 'm:' then redis.call('UNLINK', base .. ':metric:' .. string.sub(f, 3)) end
  end
  redis.call('UNLINK', base, base .. ':summary', base .. ':batches', base .. ':artifacts')
  redis.call('ZREM', PREFIX .. 'changes', rid)
end
redis.call('INCR', PREFIX .. 'rev')
redis.call('UNLINK', KEYS[4], KEYS[5])
redis.call('HDEL', KEYS[2], ARGV[3])
local field = info['project'] .. '/' .. info['name']
if redis.call('HGET', KEYS[3], field) == ARGV[3] then redis.call('HDEL', KEYS[3], field) end
publish(ARGV[1])
return 1
""",
    # The run index's refresh, read atomically. KEYS: rev, changes, experiments, then the runs zset of each
    # experiment to load whole. ARGV: the change number the index has (-1: none), prefix.
    # -> {change number now, experiment ids, summaries changed since ARGV[1], summaries of each experiment}
    "index_refresh": """
local function summaries(ids)
  local docs = {}
  for i, rid in ipairs(ids) do docs[i] = redis.call('GET', ARGV[2] .. 'run:' .. rid .. ':summary') end
  return docs
end
local out = {tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('HKEYS', KEYS[3]), {}}
if ARGV[1] ~= '-1' then out[3] = summaries(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf')) end
for k = 4, #KEYS do out[k] = summaries(redis.call('ZRANGE', KEYS[k], 0, -1)) end
return out
""",
}
