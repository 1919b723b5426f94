"""The broker's Lua scripts: each state change of a task is one atomic step inside Redis.

Theory of operation. A task is a hash (``task:<id>``) whose ``state`` follows the contract's
table. Waiting tasks are entries of the ``queue`` stream (or of ``retry``, for tasks handed back
by a lost or draining worker, which workers read first), and members of the ``pending`` sorted
set scored by their admission number: its size is the fleet's queue depth, a rank is a position.
Workers take entries through one consumer group; an entry stays in the group's pending list
until the task ends, which is how a lost worker's task is found again. Every running task carries
an ``attempt`` number: a worker's writes name the attempt they belong to, and are refused once
the task has moved on (finished, or handed to another worker), so a worker that was thought dead
can never overwrite anything. Replies go to the owning gateway's ``replies:<gateway>`` stream in
the same step that changes the task, so a task's end is published exactly once.
"""

from __future__ import annotations

from typing import Final

ADMIT: Final = """
-- KEYS: seq, pending, queue, task, gateway's task set
-- ARGV: max_queue, task_id, session, gateway, created_at, order, maxlen
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[1]) then return 0 end
local seq = redis.call('INCR', KEYS[1])
local entry = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'task', ARGV[2])
redis.call('HSET', KEYS[4], 'state', 'pending', 'seq', seq, 'session', ARGV[3], 'gateway', ARGV[4],
  'created_at', ARGV[5], 'order', ARGV[6], 'attempt', 0, 'entry', entry, 'entry_stream', 'queue')
redis.call('ZADD', KEYS[2], seq, ARGV[2])
redis.call('SADD', KEYS[5], ARGV[2])
return redis.call('ZCARD', KEYS[2])
"""

START: Final = """
-- KEYS: task, pending
-- ARGV: worker, prefix, completed_at, ttl, gateway_gone, task_id, entry, reply_ttl
-- Marks the task running on this worker and tells its gateway (the ``start`` reply, seq 1).
local st = redis.call('HMGET', KEYS[1], 'state', 'gateway', 'session', 'order', 'entry')
if st[1] ~= 'pending' or st[5] ~= ARGV[7] then return false end
redis.call('ZREM', KEYS[2], ARGV[6])
if redis.call('EXISTS', ARGV[2] .. ':gw:' .. st[2]) == 0 then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'completed_at', ARGV[3], 'error', ARGV[5])
  redis.call('HDEL', KEYS[1], 'order')
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('SREM', ARGV[2] .. ':gwtasks:' .. st[2], ARGV[6])
  return false
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[1])
local replies = ARGV[2] .. ':replies:' .. st[2]
redis.call('XADD', replies, '*', 'task', ARGV[6], 'kind', 'start', 'attempt', attempt, 'seq', 1)
redis.call('EXPIRE', replies, ARGV[8])
return {attempt, st[4], st[2], st[3]}
"""

PROGRESS: Final = """
-- KEYS: task, replies
-- ARGV: attempt, gateway heartbeat key, gateway_gone, mark_audio, reply_ttl, cues (the attempt's
--   cues so far as JSON, '' to leave them), event fields...
-- Returns 'ok', 'fenced' (the task is no longer this attempt's), or why the task must stop.
local st = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'stop')
if st[1] ~= 'running' or st[2] ~= ARGV[1] then return 'fenced' end
if st[3] and st[3] ~= '' then return st[3] end
if redis.call('EXISTS', ARGV[2]) == 0 then return ARGV[3] end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'cues', ARGV[6]) end
if #ARGV > 6 then
  if ARGV[4] == '1' then redis.call('HSET', KEYS[1], 'audio', '1') end
  local event = {}
  for i = 7, #ARGV do event[#event + 1] = ARGV[i] end
  redis.call('XADD', KEYS[2], '*', unpack(event))
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
return 'ok'
"""

FINISH: Final = """
-- KEYS: task, replies, gateway's task set, the entry's stream
-- ARGV: attempt, state, completed_at, error, ttl, reply_ttl, entry, group, task_id, then the
--   replies to send: for each, its number of field values, then the values (name, value, ...)
if ARGV[7] ~= '' then
  redis.call('XACK', KEYS[4], ARGV[8], ARGV[7])
  redis.call('XDEL', KEYS[4], ARGV[7])
end
local st = redis.call('HMGET', KEYS[1], 'state', 'attempt')
if st[1] ~= 'running' or st[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'completed_at', ARGV[3], 'error', ARGV[4])
redis.call('HDEL', KEYS[1], 'order', 'stop')
if tonumber(ARGV[5]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[5]) else redis.call('DEL', KEYS[1]) end
redis.call('SREM', KEYS[3], ARGV[9])
local i = 10
while i <= #ARGV do
  local count = tonumber(ARGV[i])
  local event = {}
  for j = i + 1, i + count do event[#event + 1] = ARGV[j] end
  redis.call('XADD', KEYS[2], '*', unpack(event))
  i = i + count + 1
end
redis.call('EXPIRE', KEYS[2], ARGV[6])
return 1
"""

REQUEUE: Final = """
-- KEYS: task, pending, retry stream, the entry's stream
-- ARGV: expected attempt, expected worker, entry, group, task_id, maxlen
-- Hands a task back to the front of the queue (its admission number is kept).
redis.call('XACK', KEYS[4], ARGV[4], ARGV[3])
redis.call('XDEL', KEYS[4], ARGV[3])
local st = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'worker', 'seq', 'entry')
if st[1] == 'running' then
  if st[2] ~= ARGV[1] or st[3] ~= ARGV[2] then return 0 end
elseif st[1] ~= 'pending' or st[5] ~= ARGV[3] then
  return 0
end
local entry = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'task', ARGV[5])
redis.call('HSET', KEYS[1], 'state', 'pending', 'worker', '', 'entry', entry, 'entry_stream', 'retry')
redis.call('ZADD', KEYS[2], st[4], ARGV[5])
return 1
"""

ABANDON: Final = """
-- KEYS: task, pending, gateway's task set, queue, retry
-- ARGV: reason, completed_at, ttl, task_id, mode ('all' or 'pending'), session ('' for any)
-- A waiting task is cancelled at once; a running one ('all') is told to stop at its next segment.
local st = redis.call('HMGET', KEYS[1], 'state', 'session', 'entry', 'entry_stream', 'stop')
if not st[1] then return 'unknown' end
if ARGV[6] ~= '' and st[2] ~= ARGV[6] then return 'other' end
if st[1] == 'pending' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'completed_at', ARGV[2], 'error', ARGV[1])
  redis.call('HDEL', KEYS[1], 'order')
  if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) else redis.call('DEL', KEYS[1]) end
  redis.call('ZREM', KEYS[2], ARGV[4])
  redis.call('SREM', KEYS[3], ARGV[4])
  if st[3] then
    if st[4] == 'retry' then redis.call('XDEL', KEYS[5], st[3]) else redis.call('XDEL', KEYS[4], st[3]) end
  end
  return 'cancelled'
end
if st[1] == 'running' then
  if ARGV[5] == 'pending' then return 'running' end
  if st[5] and st[5] ~= '' then return 'stopping' end
  redis.call('HSET', KEYS[1], 'stop', ARGV[1])
  return 'cancelling'
end
return 'finished:' .. st[1]
"""
