"""Redis I/O for the cycle's cross-run state: one script per step, one round trip each.

* ``begin``: writes our heartbeat, takes the cycle lease and reads every guard's state.
* ``record``: appends the cycle summary, updates per-symbol stats (pausing a symbol whose own
  failures repeat), the latency window, backpressure, metric totals and the breaker (versioned
  compare-and-set), and releases the lease, the heartbeat entry and any lock still held.
* ``update_breaker``: the one compare-and-set loop for every change of the breaker.
* the operator commands: kill switch, resume, breaker reset (each reports the state it changed,
  which ``runner/operator.py`` turns into a notification).

Breaker transitions are computed in Python (``breaker.py``) and saved with a version check, so
two processes never overwrite each other's transition.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from runner import adaptive
from runner.breaker import BreakerState
from runner.guards import Snapshot
from runner.store import memory, replies, scripts
from runner.store.connection import Client, Script, redis_errors
from runner.store.keys import CYCLES_LENGTH, HISTORY_LENGTH, LEASE_SLACK_SECONDS, Keys
from runner.store.locks import Owner, parse_take

log = logging.getLogger(__name__)

#: How often a compare-and-set of the breaker is retried against racing processes.
BREAKER_ATTEMPTS = 5

#: A change of the breaker: the new state for the current one, or None when there is none to make.
Mutation = Callable[[BreakerState], BreakerState | None]


@dataclass
class RecordResult:
    """What the record step reports back."""

    paused_now: list[str] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=dict)
    breaker: BreakerState | None = None
    breaker_saved: bool = True
    last_success: float | None = None
    #: (symbol, horizon, outcomes scored, hits) since the start, for the symbols just scored.
    hit_ratios: list[tuple[str, int, float, float]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: The state the cycle ends with (notifications compare it with the start's): paused symbols
    #: (symbol -> record JSON), the kill switch's fields and today's spend.
    paused: dict[str, str] = field(default_factory=dict)
    kill_switch: dict[str, str] = field(default_factory=dict)
    spend_usd: float = 0.0


class StateStore:
    """The cycle's Redis steps and the operator commands. Each public method is one round trip,
    but for ``update_breaker`` when another process changes the breaker at the same moment."""

    def __init__(self, client: Client, keys: Keys, shard: str = "0-1", reply_timeout: float = 2.0) -> None:
        self.client = client
        self.keys = keys
        self.shard = shard
        #: Seconds a reply may take (the socket timeout), for what is sent beside a script.
        self.reply_timeout = reply_timeout
        self._begin = Script(client, scripts.BEGIN)
        self._record = Script(client, scripts.RECORD)
        self._release = Script(client, scripts.RELEASE)
        self._cas = Script(client, scripts.BREAKER_CAS)
        self._read_breaker = Script(client, scripts.BREAKER_READ)
        self._resume = Script(client, scripts.RESUME)
        self._kill = Script(client, scripts.KILL_SWITCH)

    @property
    def breaker_key(self) -> str:
        return self.keys.breaker("llm_service")

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
        """Heartbeat, lease and every guard's state in one script, sent with ``CONFIG GET
        maxmemory*`` in the same round trip: a policy that may evict the runner's keys is a
        warning of every start (``runner.store.memory``)."""
        keys, args = scripts.pack(
            {
                "fencing": self.keys.fencing,
                "lease": self.keys.lease(self.shard),
                "heartbeat": self.keys.heartbeat(owner.instance_id),
                "kill_switch": self.keys.kill_switch,
                "breaker": self.breaker_key,
                "backpressure": self.keys.backpressure(self.shard),
                "latency": self.keys.latency,
                "paused": self.keys.paused,
                "spend": self.keys.spend(now),
                "failing": self.keys.failing(self.shard),
            },
            args={
                "owner": owner.to_arg(),
                "now": now.timestamp(),
                "lease_ttl": lease_ttl,
                "stale": stale_seconds,
                "hb_prefix": self.keys.heartbeat_prefix,
                "hb_ttl": heartbeat_ttl,
                "latency_n": latency_n,
                "readonly": readonly,
            },
        )
        async with redis_errors("the cycle's first step"):
            config, raw = await self._begin.after(
                memory.CONFIG_COMMAND,
                keys,
                args,
                slot_key=self.keys.fencing,
                reply_timeout=self.reply_timeout,
            )
            policy = memory.from_config(config) or await memory.read_info(
                self.client, self.keys.fencing, self.reply_timeout
            )
        data = json.loads(raw)
        warnings = [str(w) for w in data.get("warnings") or []]
        if policy.warning():
            warnings.append(str(policy.warning()))
        breaker = replies.breaker_state(replies.pairs(data.get("breaker")), self.breaker_key, warnings)
        backpressure = replies.backpressure(
            replies.pairs(data.get("backpressure")), self.keys.backpressure(self.shard), warnings
        )
        lease_row = data.get("lease")
        latency = data.get("latency")
        return Snapshot(
            kill_switch=replies.pairs(data.get("kill")),
            breaker=breaker,
            backpressure=backpressure,
            samples=adaptive.parse_samples(latency if isinstance(latency, list) else []),
            paused=replies.pairs(data.get("paused")),
            lease=parse_take(self.keys.lease(self.shard), lease_row) if lease_row else None,
            spend_usd=replies.spend_usd(replies.pairs(data.get("spend"))),
            failing=replies.streak(
                replies.pairs(data.get("failing")), self.keys.failing(self.shard), warnings
            ),
            warnings=warnings,
        )

    async def record(
        self,
        payload: dict[str, Any],
        *,
        lock_keys: list[str],
        instance_id: str,
        day: datetime,
        outcome_symbols: list[str] | None = None,
    ) -> RecordResult:
        """Write the cycle's results and release what it holds, in one script.

        ``payload`` is ``record.plan_record``'s; ``lock_keys`` are the locks still held, in the
        order of its ``lock_values``; ``outcome_symbols`` the symbols whose pending outcomes are
        scored, in the order of its ``outcomes.prices``.
        """
        keys, args = scripts.pack(
            {
                "history": self.keys.history,
                "cycles": self.keys.cycles,
                "stats": self.keys.stats,
                "paused": self.keys.paused,
                "latency": self.keys.latency,
                "backpressure": self.keys.backpressure(self.shard),
                "counters": self.keys.counters(self.shard),
                "gauges": self.keys.gauges(self.shard),
                "lease": self.keys.lease(self.shard),
                "heartbeat": self.keys.heartbeat(instance_id),
                "breaker": self.breaker_key,
                "spend": self.keys.spend(day),
                "last_cycle": self.keys.last_cycle,
                "outcomes": self.keys.outcomes_stream,
                "outcome_totals": self.keys.outcome_totals,
                "outcome_day": self.keys.outcome_day(day),
                "kill_switch": self.keys.kill_switch,
                "failing": self.keys.failing(self.shard),
            },
            {"locks": lock_keys, "pending": [self.keys.outcome_pending(s) for s in outcome_symbols or []]},
            {"history_len": HISTORY_LENGTH, "cycles_len": CYCLES_LENGTH, **payload},
        )
        async with redis_errors("recording the cycle"):
            raw = await self._record(keys, args)
        data = json.loads(raw)
        counters = replies.numbers(data.get("counters"))
        current = replies.pairs(data.get("breaker"))
        try:
            breaker: BreakerState | None = BreakerState.from_fields(current)
        except ValueError:
            breaker = None
        return RecordResult(
            paused_now=[str(s) for s in data.get("paused_now") or []],
            counters=counters,
            breaker=breaker,
            breaker_saved=bool(data.get("breaker_saved")),
            last_success=replies.as_float(data.get("last_success")),
            hit_ratios=[
                (str(row[0]), int(row[1]), float(row[2]), float(row[3]))
                for row in (data.get("hit_ratios") or [])
                if isinstance(row, list) and len(row) == 4
            ],
            warnings=[str(w) for w in data.get("warnings") or []],
            paused=replies.pairs(data.get("paused")),
            kill_switch=replies.pairs(data.get("kill")),
            spend_usd=replies.spend_usd(replies.pairs(data.get("spend"))),
        )

    # The breaker ------------------------------------------------------------------------------

    async def release(
        self, owner: Owner, lock_keys: list[str], lock_values: list[str], lease_value: str
    ) -> int:
        """Release the locks, the lease and the heartbeat entry a run holds, writing nothing else
        (for a Redis that refused the record step); how many were released."""
        keys, args = scripts.pack(
            {"lease": self.keys.lease(self.shard), "heartbeat": self.keys.heartbeat(owner.instance_id)},
            {"locks": lock_keys},
            {"lock_values": lock_values, "lease_value": lease_value, "cycle_id": owner.cycle_id},
        )
        async with redis_errors("releasing what the run holds"):
            return int(await self._release(keys, args))

    async def save_breaker(self, expected_version: int, new: BreakerState) -> tuple[bool, BreakerState]:
        """Compare-and-set the breaker; on a conflict returns (False, the fresher state)."""
        fields = new.to_fields()
        fields.pop("version")
        keys, args = scripts.pack(
            {"breaker": self.breaker_key}, args={"expected": expected_version, "fields": fields}
        )
        async with redis_errors("saving the circuit breaker"):
            raw = await self._cas(keys, args)
        saved, current = json.loads(raw)
        return bool(saved), replies.breaker_state(replies.pairs(current), self.breaker_key)

    async def read_breaker(self) -> BreakerState:
        """The breaker as stored (closed when absent or unreadable)."""
        keys, args = scripts.pack({"breaker": self.breaker_key})
        async with redis_errors("reading the circuit breaker"):
            raw = await self._read_breaker(keys, args)
        return replies.breaker_state(replies.pairs(json.loads(raw)), self.breaker_key)

    async def update_breaker(
        self, mutate: Mutation, state: BreakerState | None = None
    ) -> tuple[BreakerState, bool]:
        """Apply ``mutate`` to the stored breaker with a compare-and-set, retrying when another
        process changed it first; returns the state now stored and whether ours was saved.

        ``state`` is the caller's last reading (read afresh when None). A mutation that returns
        None has nothing to change: that counts as saved.
        """
        current = state if state is not None else await self.read_breaker()
        for _ in range(BREAKER_ATTEMPTS):
            new = mutate(current)
            if new is None:
                return current, True
            saved, current = await self.save_breaker(current.version, new)
            if saved:
                return current, True
        return current, False

    async def reset_breaker(self) -> BreakerState:
        """Close the breaker by hand, whatever its state."""
        _, state = await self.reset_breaker_from()
        return state

    async def reset_breaker_from(self) -> tuple[BreakerState, BreakerState]:
        """Close the breaker by hand; returns the state it replaced and the state now stored."""
        replaced: list[BreakerState] = []

        def close(current: BreakerState) -> BreakerState:
            replaced[:] = [current]
            return BreakerState(version=current.version)

        state, _ = await self.update_breaker(close)
        return (replaced[0] if replaced else state), state

    # Operator commands ---------------------------------------------------------------------

    async def switch_kill(
        self, on: bool, reason: str = "", by: str = "", now: datetime | None = None
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Turn the kill switch on (keeping since when, if it already was) or off, in one script;
        returns its fields before and after."""
        at = f"{now.timestamp():.3f}" if now is not None else ""
        keys, args = scripts.pack(
            {"kill_switch": self.keys.kill_switch}, args={"on": on, "reason": reason, "by": by, "at": at}
        )
        async with redis_errors("setting the kill switch" if on else "clearing the kill switch"):
            raw = await self._kill(keys=keys, args=args)
        before, after = json.loads(raw)
        return replies.pairs(before), replies.pairs(after)

    async def set_kill_switch(self, reason: str, by: str, now: datetime) -> None:
        await self.switch_kill(True, reason, by, now)

    async def clear_kill_switch(self) -> bool:
        before, _ = await self.switch_kill(False)
        return bool(before)

    async def read_kill_switch(self) -> dict[str, str]:
        async with redis_errors("reading the kill switch"):
            kind = await self.client.type(self.keys.kill_switch)
            if kind != "hash":
                return {}
            return replies.pairs(await self.client.hgetall(self.keys.kill_switch))

    async def resume(self, symbol: str) -> bool:
        """Un-pause ``symbol``; returns whether it was paused."""
        return await self.resume_symbol(symbol) is not None

    async def resume_symbol(self, symbol: str) -> str | None:
        """Un-pause ``symbol``; returns the record it was paused with, None if it was not."""
        keys, args = scripts.pack(
            {"paused": self.keys.paused, "stats": self.keys.stats}, args={"symbol": symbol}
        )
        async with redis_errors("resuming a symbol"):
            removed = await self._resume(keys=keys, args=args)
        return removed if isinstance(removed, str) else None


def lease_ttl(total_timeout: float, grace: float) -> int:
    """How long a cycle lease lives if its holder dies without releasing it."""
    return int(total_timeout + grace + LEASE_SLACK_SECONDS)
