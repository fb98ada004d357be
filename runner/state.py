"""Redis I/O for the cycle's cross-run state: one script per step, one round trip each.

* ``begin``: writes our heartbeat, takes the cycle lease and reads every guard's state.
* ``record``: appends the cycle summary, updates per-symbol stats (pausing a symbol whose own
  failures repeat), the latency window, backpressure, metric totals and the breaker (versioned
  compare-and-set), and releases the lease and any lock still held.
* kill switch, resume, breaker reset and the status read.

A state key holding garbage or the wrong type is reset to its default with a warning, never a
crash. Breaker transitions are computed in Python (``breaker.py``) and saved with a version
check, so two processes never overwrite each other's transition.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis

from runner import adaptive
from runner.adaptive import Backpressure
from runner.breaker import BreakerState
from runner.config import Breaker as BreakerConfig
from runner.connection import redis_errors
from runner.guards import Snapshot
from runner.keys import HISTORY_LENGTH, LEASE_SLACK_SECONDS, Keys
from runner.locks import TAKE_LUA, Owner, parse_take

log = logging.getLogger(__name__)

#: Lua helpers (they expect ``warnings`` to be declared): make sure a key is of the expected
#: type, deleting it otherwise with a warning; read a key flat; compare-and-set a versioned hash.
STATE_LUA = """
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
HELPERS_LUA = "local warnings = {}\n" + STATE_LUA

#: KEYS: fencing, lease, own heartbeat, kill switch, breaker, backpressure, latency, paused, spend
#: ARGV: instance_id, cycle_id, pid, now, lease_ttl, stale, hb_prefix, hb_ttl, latency_n, readonly
BEGIN_SCRIPT = (
    TAKE_LUA
    + STATE_LUA
    + """
local now = tonumber(ARGV[4])
local readonly = ARGV[10] == '1'
local lease = nil
if not readonly then
  ensure(KEYS[3], 'hash', false)
  redis.call('HSET', KEYS[3], ARGV[2], tostring(now + tonumber(ARGV[8])))
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[8]))
  lease = take(KEYS[2], KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), now, tonumber(ARGV[5]),
               tonumber(ARGV[6]), ARGV[7])
end
local n = tonumber(ARGV[9]) - 1
return cjson.encode({
  lease = lease,
  kill = flat(KEYS[4], 'hash', readonly, 0),
  breaker = flat(KEYS[5], 'hash', readonly, 0),
  backpressure = flat(KEYS[6], 'hash', readonly, 0),
  latency = flat(KEYS[7], 'list', readonly, n),
  paused = flat(KEYS[8], 'hash', readonly, 0),
  spend = flat(KEYS[9], 'hash', readonly, 0),
  warnings = warnings,
})
"""
)

#: KEYS: history, stats, paused, latency, backpressure, counters, gauges, lease, heartbeat,
#:       breaker, today's spend, last cycle, then the lock keys still held.
#: ARGV[1]: JSON payload (see ``StateStore.record``).
RECORD_SCRIPT = (
    HELPERS_LUA
    + """
local p = cjson.decode(ARGV[1])
local function present(x) return x ~= nil and x ~= cjson.null end
local paused_now = {}
if present(p.summary) then
  ensure(KEYS[1], 'list', false)
  redis.call('LPUSH', KEYS[1], p.summary)
  redis.call('LTRIM', KEYS[1], 0, p.history_len - 1)
end
if present(p.last) then
  ensure(KEYS[12], 'string', false)
  redis.call('SET', KEYS[12], p.last)
end
ensure(KEYS[2], 'hash', false)
ensure(KEYS[3], 'hash', false)
for _, u in ipairs(p.symbols) do
  local st = {}
  local raw = redis.call('HGET', KEYS[2], u.symbol)
  if raw then
    local ok, v = pcall(cjson.decode, raw)
    if ok and type(v) == 'table' then st = v end
  end
  local runs = (tonumber(st.runs) or 0) + 1
  st.runs = runs
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
  redis.call('HSET', KEYS[2], u.symbol, cjson.encode(st))
  if st.consecutive_symbol_faults >= p.pause_after and redis.call('HEXISTS', KEYS[3], u.symbol) == 0 then
    redis.call('HSET', KEYS[3], u.symbol, cjson.encode({since = u.at, reason = u.reason,
      failures = st.consecutive_symbol_faults, cycle_id = p.cycle_id}))
    paused_now[#paused_now + 1] = u.symbol
  end
end
if #p.latency > 0 then
  ensure(KEYS[4], 'list', false)
  for _, s in ipairs(p.latency) do redis.call('LPUSH', KEYS[4], s) end
  redis.call('LTRIM', KEYS[4], 0, p.latency_keep - 1)
end
if present(p.backpressure) then
  ensure(KEYS[5], 'hash', false)
  for k, v in pairs(p.backpressure) do redis.call('HSET', KEYS[5], k, v) end
end
ensure(KEYS[6], 'hash', false)
for k, v in pairs(p.counters) do redis.call('HINCRBYFLOAT', KEYS[6], k, v) end
ensure(KEYS[7], 'hash', false)
if present(p.last_success) then redis.call('HSET', KEYS[7], 'last_success', p.last_success) end
local last_success = redis.call('HGET', KEYS[7], 'last_success')
if p.lease_value ~= '' and redis.call('GET', KEYS[8]) == p.lease_value then
  redis.call('DEL', KEYS[8])
end
if p.release_heartbeat then
  if ensure(KEYS[9], 'hash', false) then redis.call('HDEL', KEYS[9], p.cycle_id) end
end
if present(p.spend) and (p.spend.usd > 0 or p.spend.calls > 0) then
  ensure(KEYS[11], 'hash', false)
  redis.call('HINCRBYFLOAT', KEYS[11], 'usd', p.spend.usd)
  redis.call('HINCRBY', KEYS[11], 'calls', p.spend.calls)
  redis.call('EXPIRE', KEYS[11], 3 * 86400)
end
local released = 0
for i = 13, #KEYS do
  if redis.call('GET', KEYS[i]) == p.lock_values[i - 12] then
    released = released + redis.call('DEL', KEYS[i])
  end
end
local breaker_saved = true
if present(p.breaker) then
  breaker_saved = cas(KEYS[10], p.breaker.expected, p.breaker.fields)
end
return cjson.encode({
  paused_now = paused_now,
  released = released,
  counters = p.want_counters and redis.call('HGETALL', KEYS[6]) or {},
  last_success = last_success,
  breaker_saved = breaker_saved,
  breaker = redis.call('HGETALL', KEYS[10]),
  warnings = warnings,
})
"""
)

#: KEYS[1] breaker; ARGV[1] expected version, ARGV[2] JSON fields. Returns [saved, current].
BREAKER_CAS_SCRIPT = (
    HELPERS_LUA
    + """
local saved = cas(KEYS[1], tonumber(ARGV[1]), cjson.decode(ARGV[2]))
return cjson.encode({saved, redis.call('HGETALL', KEYS[1])})
"""
)

#: KEYS: paused, stats; ARGV[1]: symbol. Un-pauses and clears the symbol's failure streak.
RESUME_SCRIPT = (
    HELPERS_LUA
    + """
ensure(KEYS[1], 'hash', false)
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if ensure(KEYS[2], 'hash', false) then
  local raw = redis.call('HGET', KEYS[2], ARGV[1])
  if raw then
    local ok, st = pcall(cjson.decode, raw)
    if ok and type(st) == 'table' then
      st.consecutive_symbol_faults = 0
      st.consecutive_errors = 0
      redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(st))
    end
  end
end
return removed
"""
)


def pairs(raw: Any) -> dict[str, str]:
    """A flat ``[k1, v1, k2, v2]`` reply as a dict (``{}`` and ``[]`` are both empty)."""
    if not isinstance(raw, list):
        return {}
    return {str(k): str(v) for k, v in zip(raw[::2], raw[1::2], strict=False)}


def today(now: datetime) -> str:
    return now.strftime("%Y-%m-%d")


@dataclass
class RecordResult:
    """What the record step reports back."""

    paused_now: list[str] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=dict)
    breaker: BreakerState | None = None
    breaker_saved: bool = True
    last_success: float | None = None
    warnings: list[str] = field(default_factory=list)


class StateStore:
    """The cycle's Redis steps. Each public method is one round trip."""

    def __init__(self, client: aioredis.Redis, keys: Keys, shard: str = "0-1") -> None:
        self.client = client
        self.keys = keys
        self.shard = shard
        self._begin = client.register_script(BEGIN_SCRIPT)
        self._record = client.register_script(RECORD_SCRIPT)
        self._cas = client.register_script(BREAKER_CAS_SCRIPT)
        self._resume = client.register_script(RESUME_SCRIPT)

    def spend_key(self, now: datetime) -> str:
        return self.keys._k(f"runner:spend:{today(now)}")

    async def begin(
        self,
        owner: Owner,
        now: datetime,
        *,
        lease_ttl: int,
        stale_seconds: int,
        heartbeat_ttl: int,
        latency_n: int,
        readonly: bool,
    ) -> Snapshot:
        """Heartbeat, lease and every guard's state in one script."""
        keys = [
            self.keys.fencing,
            self.keys.lease(self.shard),
            self.keys.heartbeat(owner.instance_id),
            self.keys.kill_switch,
            self.keys.breaker("llm_service"),
            self.keys.backpressure(self.shard),
            self.keys.latency,
            self.keys.paused,
            self.spend_key(now),
        ]
        args: list[str | int | float] = [
            owner.instance_id,
            owner.cycle_id,
            owner.pid,
            now.timestamp(),
            lease_ttl,
            stale_seconds,
            self.keys.heartbeat_prefix,
            heartbeat_ttl,
            latency_n,
            "1" if readonly else "0",
        ]
        async with redis_errors("the cycle's first step"):
            raw = await self._begin(keys=keys, args=args)
        data = json.loads(raw)
        warnings = [str(w) for w in data.get("warnings") or []]
        breaker_fields = pairs(data.get("breaker"))
        try:
            breaker_state = BreakerState.from_fields(breaker_fields)
        except ValueError as exc:
            warnings.append(f"{self.keys.breaker('llm_service')} unreadable ({exc}); treated as closed")
            breaker_state = BreakerState(version=_version(breaker_fields))
        bp_fields = pairs(data.get("backpressure"))
        try:
            backpressure = Backpressure.from_fields(bp_fields)
        except ValueError as exc:
            warnings.append(f"{self.keys.backpressure(self.shard)} unreadable ({exc}); reset")
            backpressure = Backpressure()
        spend = pairs(data.get("spend"))
        try:
            spend_usd = float(spend.get("usd") or 0.0)
        except ValueError:
            spend_usd = 0.0
        lease_row = data.get("lease")
        lease = parse_take(self.keys.lease(self.shard), lease_row) if lease_row else None
        latency = data.get("latency")
        return Snapshot(
            kill_switch=pairs(data.get("kill")),
            breaker=breaker_state,
            backpressure=backpressure,
            samples=adaptive.parse_samples(latency if isinstance(latency, list) else []),
            paused=pairs(data.get("paused")),
            lease=lease,
            spend_usd=spend_usd,
            warnings=warnings,
        )

    async def record(
        self,
        payload: dict[str, Any],
        *,
        lock_keys: list[str],
        heartbeat_key: str,
        spend_key: str,
    ) -> RecordResult:
        """Write the cycle's results and release what it holds, in one script."""
        keys = [
            self.keys.history,
            self.keys.stats,
            self.keys.paused,
            self.keys.latency,
            self.keys.backpressure(self.shard),
            self.keys.counters(self.shard),
            self.keys.gauges(self.shard),
            self.keys.lease(self.shard),
            heartbeat_key,
            self.keys.breaker("llm_service"),
            spend_key,
            self.keys.last_cycle,
            *lock_keys,
        ]
        payload.setdefault("history_len", HISTORY_LENGTH)
        async with redis_errors("recording the cycle"):
            raw = await self._record(keys=keys, args=[json.dumps(payload)])
        data = json.loads(raw)
        counters: dict[str, float] = {}
        for k, v in pairs(data.get("counters")).items():
            try:
                counters[k] = float(v)
            except ValueError:
                continue
        try:
            current = BreakerState.from_fields(pairs(data.get("breaker")))
        except ValueError:
            current = None
        return RecordResult(
            paused_now=[str(s) for s in data.get("paused_now") or []],
            counters=counters,
            breaker=current,
            breaker_saved=bool(data.get("breaker_saved")),
            last_success=as_float(data.get("last_success")),
            warnings=[str(w) for w in data.get("warnings") or []],
        )

    async def save_breaker(self, expected_version: int, new: BreakerState) -> tuple[bool, BreakerState]:
        """Compare-and-set the breaker; on a conflict returns (False, the fresher state)."""
        fields = new.to_fields()
        fields.pop("version")
        async with redis_errors("saving the circuit breaker"):
            raw = await self._cas(
                keys=[self.keys.breaker("llm_service")], args=[expected_version, json.dumps(fields)]
            )
        saved, current = json.loads(raw)
        try:
            state = BreakerState.from_fields(pairs(current))
        except ValueError:
            state = BreakerState(version=_version(pairs(current)))
        return bool(saved), state

    # Operator commands ---------------------------------------------------------------------

    async def set_kill_switch(self, reason: str, by: str, now: datetime) -> None:
        async with redis_errors("setting the kill switch"):
            await self.client.delete(self.keys.kill_switch)
            await self.client.hset(
                self.keys.kill_switch,
                mapping={"on": "1", "reason": reason, "by": by, "at": f"{now.timestamp():.3f}"},
            )

    async def clear_kill_switch(self) -> bool:
        async with redis_errors("clearing the kill switch"):
            return bool(await self.client.delete(self.keys.kill_switch))

    async def read_kill_switch(self) -> dict[str, str]:
        async with redis_errors("reading the kill switch"):
            kind = await self.client.type(self.keys.kill_switch)
            if kind != "hash":
                return {}
            return {str(k): str(v) for k, v in (await self.client.hgetall(self.keys.kill_switch)).items()}

    async def resume(self, symbol: str) -> bool:
        """Un-pause ``symbol``; returns whether it was paused."""
        async with redis_errors("resuming a symbol"):
            return bool(await self._resume(keys=[self.keys.paused, self.keys.stats], args=[symbol]))

    async def reset_breaker(self, cfg: BreakerConfig) -> BreakerState:
        """Close the breaker by hand, whatever its state."""
        del cfg
        for _ in range(5):
            async with redis_errors("reading the circuit breaker"):
                kind = await self.client.type(self.keys.breaker("llm_service"))
                raw = await self.client.hgetall(self.keys.breaker("llm_service")) if kind == "hash" else {}
            fields = {str(k): str(v) for k, v in raw.items()}
            version = _version(fields)
            saved, state = await self.save_breaker(version, BreakerState())
            if saved:
                return state
        return state


def as_float(value: Any) -> float | None:
    """A float from a Redis or Lua reply, None for nil, garbage or booleans."""
    if value is None or isinstance(value, bool):  # Lua's nil arrives as false
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _version(fields: dict[str, str]) -> int:
    try:
        return int(fields.get("version") or 0)
    except ValueError:
        return 0


def lease_ttl(total_timeout: float, grace: float) -> int:
    """How long a cycle lease lives if its holder dies without releasing it."""
    return int(total_timeout + grace + LEASE_SLACK_SECONDS)
