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
#: K: fencing, lease, heartbeat, kill_switch, breaker, backpressure, latency, paused, spend,
#:    failing.
#: A: owner {instance_id, cycle_id, pid}, now, lease_ttl, stale, hb_prefix, hb_ttl, latency_n,
#:    readonly (then nothing is written and nothing repaired).
#: Returns JSON {lease, kill, breaker, backpressure, latency, paused, spend, failing, warnings}.
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
  failing = flat(K.failing, 'hash', A.readonly, 0),
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
#:    string, not a hash)}], marker_ttl, items [{t (target index), record, symbol, doc, release,
#:    after (the position of the item it follows, published only if that one is; 0: none)}].
#: Returns JSON [[published | duplicate | fenced | skipped per item], warnings].
#: Every stream and hash is checked before anything is written, so a wrong-type key found
#: half-way cannot leave a marker without an entry (a lost document).
PUBLISH = (
    PRELUDE
    + """
-- Redis checks a script's ACL command by command, after the earlier writes are done: check them
-- all first (Redis 7+), so a user lacking one gets the whole batch refused with nothing written.
-- A marker without its entry would lose a document; an entry without its marker would let a
-- re-run publish it twice.
if redis.acl_check_cmd then
  local needs = {}
  for i, target in ipairs(A.targets) do
    needs[#needs + 1] = {'XADD', L.streams[i], '*', 'f', 'v'}
    needs[#needs + 1] = {'PUBLISH', target.channel, 'v'}
    needs[#needs + 1] = target.string and {'SET', L.latests[i], 'v'} or {'HSET', L.latests[i], 'f', 'v'}
  end
  for i = 1, #A.items do
    needs[#needs + 1] = {'SET', L.markers[i], 'v', 'EX', '1'}
    needs[#needs + 1] = {'DEL', L.locks[i]}
  end
  for _, cmd in ipairs(needs) do
    if not redis.acl_check_cmd(unpack(cmd)) then
      return redis.error_reply('NOPERM this user may not run ' .. cmd[1] .. ' on ' .. cmd[2])
    end
  end
end
for i, target in ipairs(A.targets) do
  ensure(L.streams[i], 'stream', false)
  ensure(L.latests[i], target.string and 'string' or 'hash', false)
end
local out = {}
for i, item in ipairs(A.items) do
  local lock_key, marker, target = L.locks[i], L.markers[i], A.targets[item.t]
  local mark = redis.pcall('GET', marker)
  local ours = redis.pcall('GET', lock_key) == item.record
  if item.after > 0 and out[item.after] ~= 'published' then
    out[i] = 'skipped'
  elseif mark == A.owner then
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

#: Scores the signals whose horizons matured, from the closes the cycle fetched (inside RECORD).
#: K: outcomes (stream), outcome_totals, outcome_day, counters. L: pending (per symbol, aligned with
#: O.prices). O: fee (a fraction), keep (seconds a pending hash lives), day_ttl, maxlen,
#: prices [{symbol, first (epoch of the first close's minute), closes}], new [{i (index into
#: prices), minute, id, model, action, confidence, entry, cost}]. A signal is scored at each
#: horizon once (its pending record then forgets the horizon, in the same script); one whose exit
#: candle is no longer in any cycle's window is counted unscored, never guessed.
OUTCOMES = """
local function bump(key, field, by)
  redis.call('HINCRBYFLOAT', key, field, by)
end
local function tally(O, s, h, stat, by)
  local group = s.symbol .. '|' .. s.model .. '|' .. s.action .. '|' .. h .. '|'
  bump(K.outcome_totals, group .. stat, by)
  bump(K.outcome_day, group .. stat, by)
end
local function score_outcomes(O, want_ratios)
  ensure(K.outcomes, 'stream', false)
  ensure(K.outcome_totals, 'hash', false)
  ensure(K.outcome_day, 'hash', false)
  for i, p in ipairs(O.prices) do
    local key = L.pending[i]
    ensure(key, 'hash', false)
    local entries = redis.call('HGETALL', key)
    local last = p.first + (#p.closes - 1) * 60
    for j = 1, #entries, 2 do
      local ok, s = pcall(cjson.decode, entries[j + 1])
      if not ok or type(s) ~= 'table' or type(s.left) ~= 'table' then
        redis.call('HDEL', key, entries[j])
        warnings[#warnings + 1] = key .. ' held an unreadable pending signal; dropped'
      else
        local left = {}
        for _, h in ipairs(s.left) do
          local at = s.minute + h * 60
          if at > last then
            left[#left + 1] = h
          elseif at < p.first then
            tally(O, s, h, 'unscored', 1)
            bump(K.counters, 'signal_outcomes_total{horizon="' .. h .. '",result="unscored"}', 1)
          else
            local exit = tonumber(p.closes[(at - p.first) / 60 + 1])
            local r = exit / s.entry - 1
            local hit = (s.action == 'BUY' and r > O.fee) or (s.action == 'SELL' and r < -O.fee)
              or (s.action == 'HOLD' and math.abs(r) <= O.fee)
            local own = (s.action == 'BUY' and r) or (s.action == 'SELL' and -r) or 0
            local doc = cjson.encode({id = s.id .. ':' .. h .. 'm', signal_id = s.id, symbol = s.symbol,
              model = s.model, action = s.action, confidence = s.confidence, horizon_minutes = h,
              entry_price = s.entry, exit_price = exit, ['return'] = r, hit = hit})
            redis.call('XADD', K.outcomes, 'MAXLEN', '~', O.maxlen, '*', 'symbol', s.symbol, 'doc', doc)
            local won = hit and 1 or 0
            tally(O, s, h, 'count', 1)
            tally(O, s, h, 'hits', won)
            tally(O, s, h, 'return', own)
            tally(O, s, h, 'hold_return', r)
            tally(O, s, h, 'brier', (s.confidence - won) ^ 2)
            if s.cost and s.cost > 0 then tally(O, s, h, 'cost', s.cost) end
            local decile = math.min(9, math.floor(s.confidence * 10))
            local cal = 'cal|' .. s.symbol .. '|' .. s.model .. '|' .. h .. '|' .. decile .. '|'
            bump(K.outcome_totals, cal .. 'count', 1)
            bump(K.outcome_totals, cal .. 'hits', won)
            bump(K.outcome_day, cal .. 'count', 1)
            bump(K.outcome_day, cal .. 'hits', won)
            local all = 'all|' .. s.symbol .. '|' .. h .. '|'
            bump(K.outcome_totals, all .. 'count', 1)
            bump(K.outcome_totals, all .. 'hits', won)
            local result = hit and 'hit' or 'miss'
            bump(K.counters, 'signal_outcomes_total{horizon="' .. h .. '",result="' .. result .. '"}', 1)
          end
        end
        if #left == 0 then
          redis.call('HDEL', key, entries[j])
        else
          s.left = left
          redis.call('HSET', key, entries[j], cjson.encode(s))
        end
      end
    end
  end
  for _, n in ipairs(O.new) do
    local key = L.pending[n.i]
    redis.call('HSETNX', key, tostring(n.minute), cjson.encode({id = n.id, symbol = O.prices[n.i].symbol,
      model = n.model, action = n.action, confidence = n.confidence, entry = n.entry, cost = n.cost,
      minute = n.minute, left = O.horizons}))
  end
  for i, _ in ipairs(O.prices) do
    if redis.call('EXISTS', L.pending[i]) == 1 then redis.call('EXPIRE', L.pending[i], O.keep) end
  end
  redis.call('EXPIRE', K.outcome_day, O.day_ttl)
  local ratios = {}
  if want_ratios then
    for _, p in ipairs(O.prices) do
      for _, h in ipairs(O.horizons) do
        local all = 'all|' .. p.symbol .. '|' .. h .. '|'
        local got = redis.call('HMGET', K.outcome_totals, all .. 'count', all .. 'hits')
        if got[1] then ratios[#ratios + 1] = {p.symbol, h, tonumber(got[1]), tonumber(got[2]) or 0} end
      end
    end
  end
  return ratios
end
"""

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

#: Releases what a run holds when Redis refused its record step (out of memory, or an ACL that
#: refuses a write the record needs): the locks it still owns, its cycle lease and its heartbeat
#: entry, so the next run need not wait for their TTLs. Only reads and deletes, which Redis runs
#: even above maxmemory. K: lease, heartbeat. L: locks (aligned with A.lock_values).
#: A: lock_values, lease_value, cycle_id. Returns how many it released.
RELEASE = (
    PRELUDE
    + """
local released = 0
for i, key in ipairs(L.locks) do
  if redis.pcall('GET', key) == A.lock_values[i] then released = released + redis.call('DEL', key) end
end
if A.lease_value ~= '' and redis.pcall('GET', K.lease) == A.lease_value then
  released = released + redis.call('DEL', K.lease)
end
if redis.call('TYPE', K.heartbeat)['ok'] == 'hash' then
  released = released + redis.call('HDEL', K.heartbeat, A.cycle_id)
end
return released
"""
)

#: Writes a cycle's outcome and releases what the run holds. The summary goes to the history list
#: and to the cycle stream (capped ``MAXLEN ~ cycles_len``), which event streams follow.
#: K: history, cycles, stats, paused, latency, backpressure, counters, gauges, lease, heartbeat,
#:    breaker, spend, last_cycle, kill_switch, failing, outcomes, outcome_totals, outcome_day.
#:    L: locks (the locks the run still owns, aligned with A.lock_values), pending (see OUTCOMES).
#: A: summary, last, history_len, cycles_len, symbols [{symbol, ok, status, code, reason,
#:    duration_ms, fault, at, action, stages {stage: status}}], pause_after, cycle_id, latency,
#:    latency_keep, backpressure, failing (the shard's failed-cycle streak, or null to leave it),
#:    counters,
#:    last_success, lease_value, release_heartbeat, lock_values, breaker {expected, fields},
#:    spend {usd, calls}, want_counters, outcomes (see OUTCOMES, or null).
#: Returns JSON {paused_now, released, counters, last_success, breaker_saved, breaker, paused,
#: kill, spend, hit_ratios [[symbol, horizon, count, hits], ...], warnings}: paused, kill (the
#: kill switch) and spend are the state the cycle ends with, which notifications compare with
#: what it began with.
RECORD = (
    PRELUDE
    + OUTCOMES
    + """
local paused_now = {}
if present(A.summary) then
  ensure(K.history, 'list', false)
  ensure(K.cycles, 'stream', false)
  -- XADD first: a user without it (an ACL) is refused before anything is written.
  redis.call('XADD', K.cycles, 'MAXLEN', '~', A.cycles_len, '*', 'doc', A.summary)
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
      code = u.code, failures = st.consecutive_symbol_faults, cycle_id = A.cycle_id}))
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
if present(A.failing) then
  redis.call('DEL', K.failing)
  for k, v in pairs(A.failing) do redis.call('HSET', K.failing, k, v) end
end
ensure(K.counters, 'hash', false)
for k, v in pairs(A.counters) do redis.call('HINCRBYFLOAT', K.counters, k, v) end
local hit_ratios = {}
if present(A.outcomes) then hit_ratios = score_outcomes(A.outcomes, A.want_counters) end
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
  hit_ratios = hit_ratios,
  paused = redis.call('HGETALL', K.paused),
  kill = flat(K.kill_switch, 'hash', true, 0),
  spend = flat(K.spend, 'hash', true, 0),
  warnings = warnings,
})
"""
)

#: Compares two stream entry ids (``ms-seq``); an unreadable id counts as ``0-0``.
IDS = """
local function id_parts(id)
  local ms, seq = string.match(tostring(id), '^(%d+)-(%d+)$')
  return tonumber(ms) or 0, tonumber(seq) or 0
end
local function id_lt(a, b)
  local am, as = id_parts(a)
  local bm, bs = id_parts(b)
  return am < bm or (am == bm and as < bs)
end
"""

#: What the archive copies next: each stream's entries after its cursor (at most A.count), and
#: the gap the stream cap opened behind the cursor. Where the stream counts what was ever added
#: (Redis 7's entries-added) and the cursor's ordinal is known, the gap is exact: the entries the
#: cap deleted beyond the cursor's ordinal (``lost``); elsewhere, a stream whose oldest entry is
#: newer than the cursor has dropped what lay between. Also the history's summaries of cycles
#: after ``history_from``. Reads only.
#: K: archive, history. L: streams (aligned with A.stages). A: stages, count, history_len.
#: Returns JSON {streams [{stage, entries [[id, [field, value, ...]], ...], added (the newest
#: entry's ordinal, when it is the last one read), gap {from, to, lost} | nil}], history
#: [summary], history_gap {from, to} | nil, warnings}.
ARCHIVE_READ = (
    PRELUDE
    + IDS
    + """
local function counts(key)
  local ok, info = pcall(redis.call, 'XINFO', 'STREAM', key)
  local added, length = nil, nil
  if ok and type(info) == 'table' then
    for j = 1, #info - 1, 2 do
      if info[j] == 'entries-added' then added = tonumber(info[j + 1]) end
      if info[j] == 'length' then length = tonumber(info[j + 1]) end
    end
  end
  return added, length
end
local progress = flat(K.archive, 'hash', true, 0)
local at = {}
for i = 1, #progress, 2 do at[progress[i]] = progress[i + 1] end
local streams = {}
for i, key in ipairs(L.streams) do
  local stage = A.stages[i]
  local out = {stage = stage, entries = {}}
  if ensure(key, 'stream', true) then
    local cursor = at['cursor:' .. stage]
    if cursor and not string.match(cursor, '^%d+-%d+$') then
      warnings[#warnings + 1] = K.archive .. ' cursor:' .. stage .. ' unreadable; copying the whole stream'
      cursor = nil
    end
    local start = cursor and ('(' .. cursor) or '-'
    out.entries = redis.call('XRANGE', key, start, '+', 'COUNT', A.count)
    local added, length = counts(key)
    if added and #out.entries > 0 and #out.entries < A.count then out.added = added end
    if cursor then
      local first = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)[1]
      local ordinal = tonumber(at['ordinal:' .. stage])
      if added and length and ordinal and ordinal <= added then
        local lost = added - length - ordinal
        if lost > 0 then out.gap = {from = cursor, to = first and first[1] or nil, lost = lost} end
      elseif first and id_lt(cursor, first[1]) then
        out.gap = {from = cursor, to = first[1]}
      end
    end
  end
  streams[i] = out
end
local history, history_gap = {}, nil
local floor = at['history_from'] or ''
local items = flat(K.history, 'list', true, A.history_len - 1)
for _, s in ipairs(items) do
  local id = string.match(s, '"cycle_id"%s*:%s*"([^"]*)"')
  if id and id > floor then history[#history + 1] = s end
end
local newest = at['history_max']
if newest and #items >= A.history_len then
  local oldest = string.match(items[#items], '"cycle_id"%s*:%s*"([^"]*)"')
  if oldest and oldest > newest then history_gap = {from = newest, to = oldest} end
end
return cjson.encode({streams = streams, history = history, history_gap = history_gap, warnings = warnings})
"""
)

#: Records what the archive step did: moves each cursor forward (never back) with its ordinal
#: when known, notes the gaps found (each counted once: a gap already noted from the same cursor
#: is updated, not counted again), the result of the write, and adds the step's metric increments.
#: K: archive, counters. A: cursors {stage: id}, ordinals {stage: n}, history_from, history_max,
#: gaps [{stage, from, to, lost}], result (ok | error | timeout | refused), error, now, counters
#: {series: by}, want_counters.
#: Returns JSON {counters, ok_at, new_gaps [stage]}.
ARCHIVE_FINISH = (
    PRELUDE
    + IDS
    + """
ensure(K.archive, 'hash', false)
for stage, id in pairs(A.cursors) do
  local current = redis.call('HGET', K.archive, 'cursor:' .. stage)
  if not current or not string.match(current, '^%d+-%d+$') or id_lt(current, id) then
    redis.call('HSET', K.archive, 'cursor:' .. stage, id)
    local ordinal = A.ordinals[stage]
    if ordinal then
      redis.call('HSET', K.archive, 'ordinal:' .. stage, ordinal)
    else
      redis.call('HDEL', K.archive, 'ordinal:' .. stage)
    end
  end
end
for _, name in ipairs({'history_from', 'history_max'}) do
  local value = A[name]
  if present(value) then
    local current = redis.call('HGET', K.archive, name)
    if not current or current < value then redis.call('HSET', K.archive, name, value) end
  end
end
ensure(K.counters, 'hash', false)
local new_gaps = {}
for _, gap in ipairs(A.gaps) do
  local field = 'gap:' .. gap.stage
  local ok, seen = pcall(cjson.decode, redis.call('HGET', K.archive, field) or '')
  local known = ok and type(seen) == 'table' and seen['from'] == gap['from']
  redis.call('HSET', K.archive, field, cjson.encode({['from'] = gap['from'], to = gap.to, lost = gap.lost,
    at = known and seen.at or A.now}))
  if not known then
    redis.call('HINCRBYFLOAT', K.counters, 'archive_gap_total{stage="' .. gap.stage .. '"}', 1)
    new_gaps[#new_gaps + 1] = gap.stage
  end
end
redis.call('HSET', K.archive, 'result', A.result, 'at', A.now)
if A.result == 'ok' then
  redis.call('HSET', K.archive, 'ok_at', A.now)
else
  redis.call('HSET', K.archive, 'error_at', A.now, 'error', A.error)
end
for k, v in pairs(A.counters) do redis.call('HINCRBYFLOAT', K.counters, k, v) end
return cjson.encode({
  counters = A.want_counters and redis.call('HGETALL', K.counters) or {},
  ok_at = redis.call('HGET', K.archive, 'ok_at'),
  new_gaps = new_gaps,
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
#: Returns the record it was paused with (its JSON), or false if it was not paused.
RESUME = (
    PRELUDE
    + """
ensure(K.paused, 'hash', false)
local removed = redis.call('HGET', K.paused, A.symbol)
redis.call('HDEL', K.paused, A.symbol)
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

#: Turns the kill switch on (keeping when it was first turned on, if it already was) or off.
#: K: kill_switch. A: on, reason, by, at. Returns JSON [the fields before, the fields after].
KILL_SWITCH = (
    PRELUDE
    + """
local before = flat(K.kill_switch, 'hash', false, 0)
local was = {}
for i = 1, #before, 2 do was[before[i]] = before[i + 1] end
if A.on then
  local at = A.at
  if was.on == '1' and was.at then at = was.at end
  redis.call('DEL', K.kill_switch)
  redis.call('HSET', K.kill_switch, 'on', '1', 'reason', A.reason, 'by', A.by, 'at', at)
else
  redis.call('DEL', K.kill_switch)
end
return cjson.encode({before, redis.call('HGETALL', K.kill_switch)})
"""
)

#: Claims new notifications and takes every pending one that is due, for this run to send.
#: A notification is claimed once across every run (``SET NX`` of its marker), then kept in the
#: outbox until it is delivered or dropped; a run that takes one leases it, so two runs never
#: send it at the same time, and one that dies mid-send leaves it to the next run after the lease.
#: K: outbox. L: markers (one per notice). A: notices [{id, doc}], now, marker_ttl, holder,
#:    lease, limit (at most this many taken), max_age (older ones are dropped).
#: Returns JSON {claimed [id], taken [entry JSON], dropped [entry JSON], warnings}.
NOTIFY_CLAIM = (
    PRELUDE
    + """
ensure(K.outbox, 'hash', false)
local claimed, taken, dropped = {}, {}, {}
for i, n in ipairs(A.notices) do
  if redis.call('SET', L.markers[i], tostring(A.now), 'NX', 'EX', A.marker_ttl) then
    redis.call('HSET', K.outbox, n.id, n.doc)
    claimed[#claimed + 1] = n.id
  end
end
local all = redis.call('HGETALL', K.outbox)
for i = 1, #all, 2 do
  local id, raw = all[i], all[i + 1]
  local ok, e = pcall(cjson.decode, raw)
  if not ok or type(e) ~= 'table' then
    redis.call('HDEL', K.outbox, id)
    warnings[#warnings + 1] = K.outbox .. ' held an unreadable entry ' .. id .. '; dropped'
  elseif A.now - (tonumber(e.created_at) or 0) > A.max_age then
    redis.call('HDEL', K.outbox, id)
    dropped[#dropped + 1] = raw
  elseif (tonumber(e.lease_until) or 0) <= A.now and #taken < A.limit then
    e.attempts = (tonumber(e.attempts) or 0) + 1
    e.lease_until = A.now + A.lease
    e.holder = A.holder
    local doc = cjson.encode(e)
    redis.call('HSET', K.outbox, id, doc)
    taken[#taken + 1] = doc
  end
end
return cjson.encode({claimed = claimed, taken = taken, dropped = dropped, warnings = warnings})
"""
)

#: Settles what a run sent: a delivered (or given-up) notification leaves the outbox; one that
#: failed keeps the URLs that took it and is due again at once (for the next run). Only the
#: run still holding an entry's lease changes it. Counts the outcomes in the shard's totals.
#: K: outbox, counters. A: holder, items [{id, remove, done, error}], counters {series: n}.
#: Returns 1.
NOTIFY_SETTLE = (
    PRELUDE
    + """
ensure(K.outbox, 'hash', false)
for _, item in ipairs(A.items) do
  local raw = redis.call('HGET', K.outbox, item.id)
  local ok, e = false, nil
  if raw then ok, e = pcall(cjson.decode, raw) end
  if ok and type(e) == 'table' and e.holder == A.holder then
    if item.remove then
      redis.call('HDEL', K.outbox, item.id)
    else
      e.done = item.done
      e.last_error = item.error
      e.lease_until = 0
      e.holder = ''
      redis.call('HSET', K.outbox, item.id, cjson.encode(e))
    end
  end
end
ensure(K.counters, 'hash', false)
for k, v in pairs(A.counters) do redis.call('HINCRBYFLOAT', K.counters, k, v) end
return 1
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
