"""The Lua scripts that change and read the cluster state in Redis, each in one atomic step."""

# KEYS: pins, generations, changes, seq, epoch, canaries.
# ARGV: kind, model_type, version, origin, ts, channel, a fresh epoch token, canary JSON,
# the caller's W3C traceparent ('' for none: then the record has no such field).
# `promote` takes its version from the canary and, in the same step, pins it and ends the
# canary: no node can see the pin without the canary's end or the reverse.
# The epoch is created here, with the counters, when absent: after Redis lost its data
# the first change starts a new epoch, so (epoch, seq) never names two changes.
# Returns {change JSON or '' when nothing changed, connected replicas}: the caller WAITs for
# a replica only when there is one (WAIT 1 with none blocks for its whole timeout).
CHANGE = """
local kind, mt, version = ARGV[1], ARGV[2], ARGV[3]
local info = redis.call('INFO', 'replication')
local replicas = tonumber(string.match(info, 'connected_slaves:(%d+)')) or 0
if kind == 'pin' then
  redis.call('HSET', KEYS[1], mt, version)
elseif kind == 'unpin' then
  if redis.call('HDEL', KEYS[1], mt) == 0 then return {'', replicas} end
elseif kind == 'canary' then
  redis.call('HSET', KEYS[6], mt, ARGV[8])
elseif kind == 'canary_abort' then
  if redis.call('HDEL', KEYS[6], mt) == 0 then return {'', replicas} end
elseif kind == 'promote' then
  local raw = redis.call('HGET', KEYS[6], mt)
  if not raw then return {'', replicas, 'absent'} end
  local ok, canary = pcall(cjson.decode, raw)
  if not ok or type(canary) ~= 'table' or type(canary.version) ~= 'string' or canary.version == '' then
    return {'', replicas, 'unreadable'}
  end
  version = canary.version
  redis.call('HSET', KEYS[1], mt, version)
  redis.call('HDEL', KEYS[6], mt)
end
local epoch = redis.call('GET', KEYS[5])
if not epoch then
  epoch = ARGV[7]
  redis.call('SET', KEYS[5], epoch)
end
local gen = redis.call('HINCRBY', KEYS[2], mt, 1)
local seq = redis.call('INCR', KEYS[4])
local record = {kind=kind, model_type=mt, version=version, generation=gen, seq=seq,
                origin=ARGV[4], ts=tonumber(ARGV[5]), epoch=epoch}
if ARGV[9] and ARGV[9] ~= '' then record.traceparent = ARGV[9] end
local change = cjson.encode(record)
redis.call('HSET', KEYS[3], mt, change)
redis.call('PUBLISH', ARGV[6], change)
return {change, replicas}
"""

# Membership on the Redis clock (nodes' clocks may disagree). KEYS: members, heartbeats.
# ARGV: node_id, heartbeat JSON, ttl ms. Expired members are swept on every beat, so the
# hash holds live nodes plus at most one heartbeat interval of dead ones.
BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(gone) do redis.call('HDEL', KEYS[2], id) end
if #gone > 0 then redis.call('ZREM', KEYS[1], unpack(gone)) end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
"""

# KEYS: members, heartbeats. Returns {ids, heartbeats} of live nodes (HMGET in chunks:
# Lua's unpack has a stack limit).
LIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
local values = {}
for i = 1, #ids, 500 do
  local chunk = redis.call('HMGET', KEYS[2], unpack(ids, i, math.min(i + 499, #ids)))
  for _, v in ipairs(chunk) do values[#values + 1] = v end
end
return {ids, values}
"""
