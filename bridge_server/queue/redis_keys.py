"""The Redis layout and its Lua scripts, shared by the front end and the worker.

Keys (all under one prefix, default "pb:"):
    queue_id, seq, turns, arrivals   strings / counters
    job:<id>        hash: owner, state, request, live, model, attempts, worker, entry
    cq:<owner>      list: the owner's queued ordinary job ids (submit order)
    owners          zset: owners with queued jobs, by claim (lowest first):
                    never ran = arrival - 1e12, else the turn it last started
    past:<owner>    the turn of an owner whose queue emptied (expires)
    live            list: queued live job ids, oldest first
    lq:<owner>      the owner's queued live job; lr:<owner> its running one
    active          queued + running ordinary jobs (the global limit)
    stream          the stream of started jobs; consumer group "workers". An
                    entry stays pending until its job ends: a worker that dies
                    leaves it pending, and XAUTOCLAIM gives it to another.
    cancel:<id>     set by cancel; the running worker checks it every step
    result:<id>     the final frame (TTL); results: zset id -> finish time
    worker:<name>   a worker's heartbeat + catalog (TTL)
    wake            list a worker blocks on (BLPOP) for new jobs
    events          pub/sub channel: b"P"|b"F" + id + b"\\0" + frame

Scheduling runs in Lua, so each decision is atomic across any number of front
ends and workers; the rules are fair.py's (tests check both).
"""

from __future__ import annotations

GROUP = "workers"

# SUBMIT: ARGV = prefix, id, owner, request, live(0/1), model, per_client, max_queue, ttl
SUBMIT = """
local p, id, owner = ARGV[1], ARGV[2], ARGV[3]
local live = ARGV[5] == '1'
if not live then
  if tonumber(redis.call('GET', p..'active') or '0') >= tonumber(ARGV[8]) then return {'queue_full'} end
  if tonumber(ARGV[7]) > 0 and redis.call('LLEN', p..'cq:'..owner) >= tonumber(ARGV[7]) then return {'client_queue_full'} end
end
redis.call('HSET', p..'job:'..id, 'owner', owner, 'state', 'queued', 'request', ARGV[4], 'live', ARGV[5],
           'model', ARGV[6], 'attempts', 0)
local superseded = ''
if live then
  local old = redis.call('GET', p..'lq:'..owner)
  if old then
    redis.call('LREM', p..'live', 0, old)
    superseded = old
  end
  local running = redis.call('GET', p..'lr:'..owner)
  if running then redis.call('SET', p..'cancel:'..running, '1', 'EX', 3600) end
  redis.call('SET', p..'lq:'..owner, id)
  redis.call('RPUSH', p..'live', id)
else
  redis.call('INCR', p..'active')
  redis.call('RPUSH', p..'cq:'..owner, id)
  if not redis.call('ZSCORE', p..'owners', owner) then
    local past = redis.call('GET', p..'past:'..owner)
    local score = past and tonumber(past) or (redis.call('INCR', p..'arrivals') - 1e12)
    redis.call('ZADD', p..'owners', score, owner)
  end
end
redis.call('LPUSH', p..'wake', '1')
redis.call('LTRIM', p..'wake', 0, 63)
return {'ok', superseded}
"""

# PICK: ARGV = prefix, worker, preferred model ('' = none), default model name
# Takes the next job by the fair rules, adds it to the stream and reads it for
# this worker in one step, so the job is pending (claimable) from the start.
PICK = """
local p, worker, prefer, default = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local id = nil
while true do
  id = redis.call('LPOP', p..'live')
  if not id then break end
  local owner = redis.call('HGET', p..'job:'..id, 'owner')
  if owner then
    redis.call('DEL', p..'lq:'..owner)
    redis.call('SET', p..'lr:'..owner, id, 'EX', 3600)
    break
  end
end
if not id then
  local first = redis.call('ZRANGE', p..'owners', 0, 0, 'WITHSCORES')
  if #first == 0 then return nil end
  local best = first[2]
  local equals
  if tonumber(best) < 0 then  -- owners that never ran are equally entitled (arrival order)
    equals = redis.call('ZRANGEBYSCORE', p..'owners', '-inf', '(0')
  else
    equals = redis.call('ZRANGEBYSCORE', p..'owners', best, best)
  end
  local chosen = equals[1]
  if prefer ~= '' then
    for _, owner in ipairs(equals) do
      local head = redis.call('LINDEX', p..'cq:'..owner, 0)
      local model = head and redis.call('HGET', p..'job:'..head, 'model') or nil
      if model == '' then model = default end
      if model == prefer then chosen = owner break end
    end
  end
  id = redis.call('LPOP', p..'cq:'..chosen)
  local turn = redis.call('INCR', p..'turns')
  if redis.call('LLEN', p..'cq:'..chosen) == 0 then
    redis.call('ZREM', p..'owners', chosen)
    redis.call('SET', p..'past:'..chosen, turn, 'EX', 86400)
  else
    redis.call('ZADD', p..'owners', turn, chosen)
  end
  if not id then return nil end
end
redis.call('XADD', p..'stream', '*', 'id', id)
local read = redis.call('XREADGROUP', 'GROUP', 'workers', worker, 'COUNT', 1, 'STREAMS', p..'stream', '>')
local entry = read[1][2][1][1]
redis.call('HSET', p..'job:'..id, 'state', 'running', 'worker', worker, 'entry', entry)
redis.call('HINCRBY', p..'job:'..id, 'attempts', 1)
return {id, entry}
"""

# FINISH: ARGV = prefix, id, state, frame, ttl, keep count, entry, worker
# Ends a job exactly once: a second run of the same job (its first worker only
# seemed dead) finds it over and changes nothing. Returns 1 if this ended it.
FINISH = """
local p, id, state, frame = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = p..'job:'..id
local entry = ARGV[7]
if entry ~= '' then
  redis.call('XACK', p..'stream', 'workers', entry)
  redis.call('XDEL', p..'stream', entry)
end
local current = redis.call('HGET', key, 'state')
if current ~= 'queued' and current ~= 'running' then return 0 end
local owner = redis.call('HGET', key, 'owner')
local live = redis.call('HGET', key, 'live') == '1'
if live then
  if redis.call('GET', p..'lr:'..owner) == id then redis.call('DEL', p..'lr:'..owner) end
  redis.call('DEL', key)
else
  redis.call('DECR', p..'active')
  redis.call('HSET', key, 'state', state)
  redis.call('HDEL', key, 'request')
  redis.call('EXPIRE', key, tonumber(ARGV[5]))
  redis.call('SET', p..'result:'..id, frame, 'EX', tonumber(ARGV[5]))
  redis.call('ZADD', p..'results', redis.call('TIME')[1], id)
  local extra = redis.call('ZCARD', p..'results') - tonumber(ARGV[6])
  if extra > 0 then
    for _, old in ipairs(redis.call('ZRANGE', p..'results', 0, extra - 1)) do
      redis.call('DEL', p..'result:'..old, p..'job:'..old)
    end
    redis.call('ZREMRANGEBYRANK', p..'results', 0, extra - 1)
  end
end
redis.call('DEL', p..'cancel:'..id)
redis.call('PUBLISH', p..'events', 'F'..id..'\\0'..frame)
return 1
"""

# CANCEL: ARGV = prefix, id, owner, cancelled frame, ttl, keep count
CANCEL = """
local p, id, owner = ARGV[1], ARGV[2], ARGV[3]
local key = p..'job:'..id
if redis.call('HGET', key, 'owner') ~= owner then return 'missing' end
local state = redis.call('HGET', key, 'state')
if state == 'queued' then
  if redis.call('HGET', key, 'live') == '1' then
    redis.call('LREM', p..'live', 0, id)
    redis.call('DEL', p..'lq:'..owner)
  else
    redis.call('LREM', p..'cq:'..owner, 0, id)
    if redis.call('LLEN', p..'cq:'..owner) == 0 then redis.call('ZREM', p..'owners', owner) end
  end
  return 'queued'
elseif state == 'running' then
  if redis.call('SET', p..'cancel:'..id, '1', 'NX', 'EX', 3600) then return 'cancelling' end
  return 'already cancelling'
end
return state
"""
