"""Every Lua script the runner sends to Redis, as named constants.

Scripts take named arguments, never positions: ``pack(keys, lists, args)`` sends the named keys
and key lists as ``KEYS`` (so Redis Cluster sees every key a script touches) and one JSON object
as ``ARGV[1]``; the shared prelude turns them back into ``K.<name>`` (a key), ``L.<name>`` (a
list of keys) and ``A.<field>`` (an argument). Each script's header names what it reads.

Redis does not undo a script's earlier writes when a later command fails, so a script checks
the type of every key it writes before it writes anything that must not be left half done.
A state key holding garbage or the wrong type is reset with a warning, never a crash.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

#: Decodes the named arguments and declares what every script may use: ``warnings`` (messages
#: about state that was reset); ``ensure(key, kind, readonly)``: the key is of ``kind`` or
#: absent (a key of another type is deleted unless readonly, with a warning), true when it
#: exists; ``flat(key, kind, readonly, n)``: a hash or list (first n + 1 items) as a flat
#: array; ``cas(key, expected, fields)``: replace a versioned hash if its version is
#: ``expected``; ``present(x)``: x is neither nil nor JSON null.
PRELUDE = """
local A = cjson.decode(ARGV[1])
local K, L = {}, {}
for i, name in ipairs(A.keys) do K[name] = KEYS[i] end
for name, span in pairs(A.lists) do
  local t = {}
  for i = 0, span[2] - 1 do t[#t + 1] = KEYS[span[1] + i] end
  L[name] = t
end
local warnings = {}
local function present(x) return x ~= nil and x ~= cjson.null end
local function ensure(key, kind, readonly)
  local t = redis.call('TYPE', key)['ok']
  if t == 'none' or t == kind then return t ~= 'none' end
  if not readonly then redis.call('DEL', key) end
  warnings[#warnings + 1] = key .. ' held a ' .. t .. ' instead of a ' .. kind .. '; reset to default'
  return false
end
local function flat(key, kind, readonly, n)
  if not ensure(key, kind, readonly) then return {} end
  if kind == 'hash' then return redis.call('HGETALL', key) end
  if kind == 'list' then return redis.call('LRANGE', key, 0, n) end
  return {redis.call('GET', key)}
end
local function cas(key, expected, fields)
  ensure(key, 'hash', false)
  local current = tonumber(redis.call('HGET', key, 'version') or '0') or 0
  if current ~= expected then return false end
  redis.call('DEL', key)
  for k, v in pairs(fields) do redis.call('HSET', key, k, tostring(v)) end
  redis.call('HSET', key, 'version', tostring(expected + 1))
  return true
end
"""

#: take(key, fencing_key, owner, now, ttl, stale, hb_prefix)
#:   -> {status, token, value, reason, previous record}, status acquired | taken_over | held.
#: ``owner`` is {instance_id, cycle_id, pid}. A free key is taken with a new fencing token; a
#: held key is taken over when its owner's heartbeat for that cycle is gone, the lock is older
#: than ``stale`` seconds, or its record is unreadable. The holder's heartbeat key is derived
#: from its record (``hb_prefix .. instance_id``), so it is not in KEYS: on a cluster the
#: prefix's hash tag puts it in the slot of every other key the script touches.
#:
#: A fencing token is max(counter + 1, the master's clock in microseconds since the epoch). The
#: counter makes tokens strictly increasing on one master; the clock makes them keep increasing
#: when a failover loses the counter's latest increments (asynchronous replication), as long as
#: the new master's clock is not behind the old one's by more than the failover took. A counter
#: that is garbage restarts from the clock, with a warning. Tokens have 16 digits, more than
#: cjson's and Lua's number formatting keep (14), so the script handles them as strings of
#: digits (a JSON number in the lock record); they stay exact doubles, below 2^53, until 2255.
TAKE = """
local function next_token(key)
  local time = redis.call('TIME')
  local clock_us = tonumber(time[1]) * 1000000 + tonumber(time[2])
  local raw = redis.pcall('GET', key)
  local last = 0
  if type(raw) == 'string' and #raw <= 16 and string.match(raw, '^%d+$') then
    last = tonumber(raw)
  elseif raw then
    warnings[#warnings + 1] = key .. ' was not a counter; restarted from the clock'
  end
  local token = string.format('%d', math.max(last + 1, clock_us))
  redis.call('SET', key, token)
  return token
end
local function take(key, fencing_key, owner, now, ttl, stale, hb_prefix)
  local current = redis.pcall('GET', key)
  local reason = nil
  local previous = ''
  if type(current) == 'table' then
    redis.call('DEL', key)
    warnings[#warnings + 1] = key .. ' was not a lock record; reset'
    reason = 'corrupt'
  elseif current then
    previous = current
    local ok, held = pcall(cjson.decode, current)
    if not ok or type(held) ~= 'table' then
      reason = 'corrupt'
    elseif now - (tonumber(held.acquired_at) or 0) > stale then
      reason = 'age'
    else
      local beat = redis.pcall('HGET', hb_prefix .. tostring(held.instance_id), tostring(held.cycle_id))
      if type(beat) ~= 'string' or (tonumber(beat) or 0) < now then
        reason = 'heartbeat'
      else
        return {'held', 0, current, '', ''}
      end
    end
  end
  local token = next_token(fencing_key)
  -- The token goes in as its digits: cjson would round it to 14 significant ones.
  local record = cjson.encode({instance_id = owner.instance_id, cycle_id = owner.cycle_id,
                               pid = owner.pid, acquired_at = now})
  local value = string.sub(record, 1, -2) .. ',"token":' .. token .. '}'

  redis.call('SET', key, value, 'EX', ttl)
  if reason then return {'taken_over', token, value, reason, previous} end
  return {'acquired', token, value, '', ''}
end
"""

#: The first step of a cycle: our heartbeat, the cycle lease and every guard's state.
#: K: fencing, lease, heartbeat, kill_switch, breaker, backpressure, latency, paused, spend.
#: A: owner {instance_id, cycle_id, pid}, now, lease_ttl, stale, hb_prefix, hb_ttl, latency_n,
#:    readonly (then nothing is written and nothing repaired).
#: Returns JSON {lease, kill, breaker, backpressure, latency, paused, spend, warnings}.
BEGIN = (
    PRELUDE
    + TAKE
    + """
local lease = nil
if not A.readonly then
  ensure(K.heartbeat, 'hash', false)
  redis.call('HSET', K.heartbeat, A.owner.cycle_id, tostring(A.now + A.hb_ttl))
  redis.call('EXPIRE', K.heartbeat, A.hb_ttl)
  lease = take(K.lease, K.fencing, A.owner, A.now, A.lease_ttl, A.stale, A.hb_prefix)
end
return cjson.encode({
  lease = lease,
  kill = flat(K.kill_switch, 'hash', A.readonly, 0),
  breaker = flat(K.breaker, 'hash', A.readonly, 0),
  backpressure = flat(K.backpressure, 'hash', A.readonly, 0),
  latency = flat(K.latency, 'list', A.readonly, A.latency_n - 1),
  paused = flat(K.paused, 'hash', A.readonly, 0),
  spend = flat(K.spend, 'hash', A.readonly, 0),
  warnings = warnings,
})
"""
)

#: Takes every symbol's lock in one script.
#: K: fencing. L: locks. A: owner, now, ttl, stale, hb_prefix.
#: Returns JSON [take(...) per lock key, in order].
ACQUIRE = (
    PRELUDE
    + TAKE
    + """
local out = {}
for i, key in ipairs(L.locks) do
  out[i] = take(key, K.fencing, A.owner, A.now, A.ttl, A.stale, A.hb_prefix)
end
return cjson.encode(out)
"""
)

#: Publishes a batch of documents: for each, only while this run still holds the symbol's lock
#: with exactly the record it wrote (fencing) and only if its id was never published
#: (idempotency): XADD to its target's capped stream, PUBLISH to its channel, HSET of the latest
#: hash, and a marker holding the publishing run's cycle id. A document whose marker holds our
#: own cycle id was published by an earlier try of this run whose reply was lost (and which may
#: have released the lock): it is reported published again, and nothing is written twice. An
#: item marked ``release`` frees its lock once it is published or found a duplicate.
#: L: streams, latests (one per target), locks, markers (one per item).
#: A: owner (cycle id), targets [{channel, field, key_field, maxlen, string (the latest key is a
#:    string, not a hash)}], marker_ttl, items [{t (target index), record, symbol, doc, release}].
#: Returns JSON [[published | duplicate | fenced per item], warnings].
#: Every stream and hash is checked before anything is written, so a wrong-type key found
#: half-way cannot leave a marker without an entry (a lost document).
PUBLISH = (
    PRELUDE
    + """
for i, target in ipairs(A.targets) do
  ensure(L.streams[i], 'stream', false)
  ensure(L.latests[i], target.string and 'string' or 'hash', false)
end
local out = {}
for i, item in ipairs(A.items) do
  local lock_key, marker, target = L.locks[i], L.markers[i], A.targets[item.t]
  local mark = redis.pcall('GET', marker)
  local ours = redis.pcall('GET', lock_key) == item.record
  if mark == A.owner then
    out[i] = 'published'
    if item.release and ours then redis.call('DEL', lock_key) end
  elseif not ours then
    out[i] = 'fenced'
  elseif mark then
    out[i] = 'duplicate'
    if item.release then redis.call('DEL', lock_key) end
  else
    redis.call('SET', marker, A.owner, 'EX', A.marker_ttl)
    redis.call('XADD', L.streams[item.t], 'MAXLEN', '~', target.maxlen, '*',
               target.key_field, item.symbol, target.field, item.doc)
    redis.call('PUBLISH', target.channel, item.doc)
    if target.string then
      redis.call('SET', L.latests[item.t], item.doc)
    else
      redis.call('HSET', L.latests[item.t], item.symbol, item.doc)
    end
    if item.release then redis.call('DEL', lock_key) end
    out[i] = 'published'
  end
end
return cjson.encode({out, warnings})
"""
)

#: Sent right before ``WAIT`` on the same connection, at the end of a cycle: which of this run's
#: documents are still on the master (their markers hold our cycle id), each marker touched
#: (``EXPIRE``, a write) so that the replica's acknowledgement of this script covers them: a
#: replica that acknowledges it holds the master's data up to it, the documents included.
#: L: markers. A: owner (cycle id), ttl. Returns JSON [1 (still there) | 0 (gone) per marker].
CONFIRM = (
    PRELUDE
    + """
local out = {}
for i, marker in ipairs(L.markers) do
  if redis.pcall('GET', marker) == A.owner then
    redis.call('EXPIRE', marker, A.ttl)
    out[i] = 1
  else
    out[i] = 0
  end
end
return cjson.encode(out)
"""
)

#: Refreshes this run's heartbeat entry. K: heartbeat. A: field (cycle id), expiry, ttl.
#: Returns JSON [warnings].
HEARTBEAT = (
    PRELUDE
    + """
ensure(K.heartbeat, 'hash', false)
redis.call('HSET', K.heartbeat, A.field, A.expiry)
redis.call('EXPIRE', K.heartbeat, A.ttl)
return cjson.encode(warnings)
"""
)

#: Turns the kill switch on, replacing whatever the key held. K: kill_switch. A: fields.
KILL_SWITCH_ON = (
    PRELUDE
    + """
redis.call('DEL', K.kill_switch)
for k, v in pairs(A.fields) do redis.call('HSET', K.kill_switch, k, v) end
return 1
"""
)

#: Writes a cycle's outcome and releases what the run holds.
#: K: history, stats, paused, latency, backpressure, counters, gauges, lease, heartbeat, breaker,
#:    spend, last_cycle. L: locks (the locks the run still owns, aligned with A.lock_values).
#: A: summary, last, history_len, symbols [{symbol, ok, status, reason, duration_ms, fault, at,
#:    action, stages {stage: status}}], pause_after, cycle_id, latency, latency_keep, backpressure, counters,
#:    last_success, lease_value, release_heartbeat, lock_values, breaker {expected, fields},
#:    spend {usd, calls}, want_counters.
#: Returns JSON {paused_now, released, counters, last_success, breaker_saved, breaker, warnings}.
RECORD = (
    PRELUDE
    + """
local paused_now = {}
if present(A.summary) then
  ensure(K.history, 'list', false)
  redis.call('LPUSH', K.history, A.summary)
  redis.call('LTRIM', K.history, 0, A.history_len - 1)
end
if present(A.last) then
  ensure(K.last_cycle, 'string', false)
  redis.call('SET', K.last_cycle, A.last)
end
ensure(K.stats, 'hash', false)
ensure(K.paused, 'hash', false)
for _, u in ipairs(A.symbols) do
  local st = {}
  local raw = redis.call('HGET', K.stats, u.symbol)
  if raw then
    local ok, v = pcall(cjson.decode, raw)
    if ok and type(v) == 'table' then st = v end
  end
  st.runs = (tonumber(st.runs) or 0) + 1
  st.successes = tonumber(st.successes) or 0
  st.consecutive_errors = tonumber(st.consecutive_errors) or 0
  st.consecutive_symbol_faults = tonumber(st.consecutive_symbol_faults) or 0
  if u.ok then
    st.successes = st.successes + 1
    st.consecutive_errors = 0
    st.consecutive_symbol_faults = 0
  else
    st.consecutive_errors = st.consecutive_errors + 1
    if u.fault then st.consecutive_symbol_faults = st.consecutive_symbol_faults + 1 end
  end
  local avg = tonumber(st.avg_ms)
  if avg == nil then
    st.avg_ms = u.duration_ms
  else
    st.avg_ms = math.floor(avg * 0.8 + u.duration_ms * 0.2 + 0.5)
  end
  st.last_status = u.status
  st.last_reason = u.reason
  st.last_run_at = u.at
  if present(u.action) then st.last_action = u.action end
  if present(u.stages) then
    if type(st.stages) ~= 'table' then st.stages = {} end
    for stage, status in pairs(u.stages) do
      local s = st.stages[stage]
      if type(s) ~= 'table' then s = {runs = 0, ok = 0} end
      if status ~= 'skipped' then
        s.runs = (tonumber(s.runs) or 0) + 1
        if status == 'ok' then s.ok = (tonumber(s.ok) or 0) + 1 end
      end
      s.last = status
      st.stages[stage] = s
    end
  end
  redis.call('HSET', K.stats, u.symbol, cjson.encode(st))
  if st.consecutive_symbol_faults >= A.pause_after and redis.call('HEXISTS', K.paused, u.symbol) == 0 then
    redis.call('HSET', K.paused, u.symbol, cjson.encode({since = u.at, reason = u.reason,
      failures = st.consecutive_symbol_faults, cycle_id = A.cycle_id}))
    paused_now[#paused_now + 1] = u.symbol
  end
end
if #A.latency > 0 then
  ensure(K.latency, 'list', false)
  for _, s in ipairs(A.latency) do redis.call('LPUSH', K.latency, s) end
  redis.call('LTRIM', K.latency, 0, A.latency_keep - 1)
end
if present(A.backpressure) then
  ensure(K.backpressure, 'hash', false)
  for k, v in pairs(A.backpressure) do redis.call('HSET', K.backpressure, k, v) end
end
ensure(K.counters, 'hash', false)
for k, v in pairs(A.counters) do redis.call('HINCRBYFLOAT', K.counters, k, v) end
ensure(K.gauges, 'hash', false)
if present(A.last_success) then redis.call('HSET', K.gauges, 'last_success', A.last_success) end
local last_success = redis.call('HGET', K.gauges, 'last_success')
if A.lease_value ~= '' and redis.call('GET', K.lease) == A.lease_value then
  redis.call('DEL', K.lease)
end
if A.release_heartbeat then
  if ensure(K.heartbeat, 'hash', false) then redis.call('HDEL', K.heartbeat, A.cycle_id) end
end
if present(A.spend) and (A.spend.usd > 0 or A.spend.calls > 0) then
  ensure(K.spend, 'hash', false)
  redis.call('HINCRBYFLOAT', K.spend, 'usd', A.spend.usd)
  redis.call('HINCRBY', K.spend, 'calls', A.spend.calls)
  redis.call('EXPIRE', K.spend, 3 * 86400)
end
local released = 0
for i, key in ipairs(L.locks) do
  if redis.call('GET', key) == A.lock_values[i] then
    released = released + redis.call('DEL', key)
  end
end
local breaker_saved = true
if present(A.breaker) then
  breaker_saved = cas(K.breaker, A.breaker.expected, A.breaker.fields)
end
return cjson.encode({
  paused_now = paused_now,
  released = released,
  counters = A.want_counters and redis.call('HGETALL', K.counters) or {},
  last_success = last_success,
  breaker_saved = breaker_saved,
  breaker = redis.call('HGETALL', K.breaker),
  warnings = warnings,
})
"""
)

#: Compare-and-set of the breaker. K: breaker. A: expected (version), fields.
#: Returns JSON [saved, the breaker's fields now].
BREAKER_CAS = (
    PRELUDE
    + """
local saved = cas(K.breaker, A.expected, A.fields)
return cjson.encode({saved, redis.call('HGETALL', K.breaker)})
"""
)

#: Reads the breaker's fields, whatever the key holds. K: breaker. Returns JSON [fields].
BREAKER_READ = (
    PRELUDE
    + """
return cjson.encode(flat(K.breaker, 'hash', true, 0))
"""
)

#: Un-pauses a symbol and clears its failure streak. K: paused, stats. A: symbol.
#: Returns 1 if the symbol was paused.
RESUME = (
    PRELUDE
    + """
ensure(K.paused, 'hash', false)
local removed = redis.call('HDEL', K.paused, A.symbol)
if ensure(K.stats, 'hash', false) then
  local raw = redis.call('HGET', K.stats, A.symbol)
  if raw then
    local ok, st = pcall(cjson.decode, raw)
    if ok and type(st) == 'table' then
      st.consecutive_symbol_faults = 0
      st.consecutive_errors = 0
      redis.call('HSET', K.stats, A.symbol, cjson.encode(st))
    end
  end
end
return removed
"""
)

#: Reserves a slot of the shared rate limit (GCRA).
#: K: tat (theoretical arrival time, epoch seconds), pause (pause-until, epoch seconds).
#: A: now, interval (emission interval), tolerance ((burst - 1) * interval), max_wait.
#: Returns JSON [granted (0/1), seconds to wait]; not granted: no slot was taken.
RESERVE = (
    PRELUDE
    + """
local pause_until = tonumber(redis.pcall('GET', K.pause)) or 0
local tat = tonumber(redis.pcall('GET', K.tat)) or 0
local start = math.max(A.now, pause_until)
tat = math.max(tat, start)
local at = math.max(start, tat - A.tolerance)
if at - A.now > A.max_wait then return cjson.encode({0, at - A.now}) end
local new_tat = tat + A.interval
redis.call('SET', K.tat, tostring(new_tat), 'PX', math.ceil((new_tat - A.now) * 1000) + 1000)
return cjson.encode({1, at - A.now})
"""
)

#: Pauses the shared rate limit until ``A.until`` (only ever extends it). K: pause. A: until, now.
PAUSE = (
    PRELUDE
    + """
local current = tonumber(redis.pcall('GET', K.pause)) or 0
if A['until'] > current then
  redis.call('SET', K.pause, tostring(A['until']), 'PX', math.ceil((A['until'] - A.now) * 1000) + 1000)
end
return 1
"""
)


def pack(
    keys: Mapping[str, str],
    lists: Mapping[str, Sequence[str]] | None = None,
    args: Mapping[str, Any] | None = None,
) -> tuple[list[str], list[str]]:
    """``(KEYS, ARGV)`` for a script of this module: named keys, key lists and JSON arguments."""
    names = list(keys)
    flat_keys = [keys[n] for n in names]
    spans: dict[str, list[int]] = {}
    for name, items in (lists or {}).items():
        spans[name] = [len(flat_keys) + 1, len(items)]
        flat_keys.extend(items)
    doc = {**(args or {}), "keys": names, "lists": spans}
    return flat_keys, [json.dumps(doc, separators=(",", ":"))]
