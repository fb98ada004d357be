"""What the failover scenarios share: real ``runner cycle`` runs one after another while the
test breaks the Redis topology under them, and the checks a user would make afterwards.

Each scenario has its own key prefix (on a cluster: its own hash tag, so its own shard), so
scenarios of one module never see each other's locks, leases or streams, and each run of a
scenario its own scheduled minute. A run in flight when the topology changes is arranged by a
gate (the test acts once a run holds its locks), never by a delay.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from tests.integration.helpers import scheduled_now
from tests.reliability.support import Proc, bad_lines, run, runner_env
from tests.support.topology import SETTLE_S, eventually

SYMBOLS = ["ETH/USD", "BTC/USD", "SOL/USD"]
#: Streams and the documents a run reports published into each.
STREAMS = {
    "signals:raw": "signals",
    "signals:scored": "scores",
    "signals:advised": "advice",
    "reports:cycle": "report",
}
#: Each analysis takes this long, so a run holds its locks long enough for the test to act.
ANALYSIS_S = "0.4"
#: Runs of one scenario each get their own scheduled minute, this many on either side of its start.
MINUTES = 50


@dataclass
class CycleRun:
    """One finished ``runner cycle`` and when it ran (monotonic seconds)."""

    index: int
    started: float
    ended: float
    proc: Proc

    @property
    def code(self) -> int | None:
        return self.proc.code

    def doc(self) -> dict[str, Any]:
        return dict(json.loads(self.proc.stdout))

    def ok(self) -> bool:
        """Exit 0, every symbol through every stage and published, the report too."""
        if self.code != 0:
            return False
        doc = self.doc()
        return (
            bool(doc.get("results"))
            and all(r["status"] == "ok" and r["code"] == "ok" for r in doc["results"])
            and doc.get("report_status") == "ok"
        )


@dataclass
class Cycles:
    """``runner cycle`` runs one after another in a thread until stopped."""

    url: str
    prefix: str
    directory: Path
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    runs: list[CycleRun] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def env(self, index: int) -> dict[str, str]:
        # Minutes before the module's start, then after it: all within the hour the runner accepts.
        offset = -index if index <= MINUTES else index - MINUTES
        return runner_env(
            self.url,
            self.directory,
            RUNNER_SCHEDULED_AT=scheduled_now(offset, at=self.at),
            RUNNER_REDIS__KEY_PREFIX=self.prefix,
            RUNNER_REDIS__SOCKET_TIMEOUT_SECONDS="1",
            INSTANCE_ID=f"pod-{index}",
            SCRIPTED_DELAY=ANALYSIS_S,
        )

    def _loop(self) -> None:
        try:
            index = 0
            while not self._stop.is_set():
                index += 1
                assert index <= 2 * MINUTES, "more runs than minutes within the hour the runner accepts"
                started = time.monotonic()
                proc = run(
                    ["cycle", "--symbols", ",".join(SYMBOLS), "--json"], self.env(index), self.directory
                )
                self.runs.append(CycleRun(index, started, time.monotonic(), proc))
        except BaseException as exc:  # reported by stop()
            self._error = exc

    def __enter__(self) -> Cycles:
        self._thread = threading.Thread(target=self._loop, name="cycles", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(120)
            self._thread = None
        if self._error is not None:
            raise self._error

    def wait_for(self, predicate: Callable[[CycleRun], bool], what: str, after: float = 0.0) -> CycleRun:
        """The first finished run that started after ``after`` and meets ``predicate``."""

        def found() -> CycleRun | None:
            if self._error is not None:
                raise self._error
            return next((r for r in list(self.runs) if r.started >= after and predicate(r)), None)

        return eventually(found, what, timeout=2 * SETTLE_S)  # type: ignore[no-any-return]


def locks_held(client: redis.Redis, prefix: str) -> bool:
    return bool(list(client.scan_iter(match=f"{prefix}signal:lock:*", count=1000)))


def lock_keys(client: redis.Redis, prefix: str) -> list[str]:
    return sorted(client.scan_iter(match=f"{prefix}signal:lock:*", count=1000))


def when_locks_held(client_of: Callable[[], redis.Redis], prefix: str) -> float:
    """Wait until a run holds its locks on the master; the moment it did."""

    def held() -> bool:
        with client_of() as c:
            return locks_held(c, prefix)

    eventually(held, "a run holds its locks", timeout=2 * SETTLE_S)
    return time.monotonic()


def surviving(client: redis.Redis, prefix: str) -> dict[str, list[dict[str, Any]]]:
    """Every document in each stream of the surviving master, oldest first."""
    out: dict[str, list[dict[str, Any]]] = {}
    for stream in STREAMS:
        docs = []
        for _, fields in client.xrange(f"{prefix}{stream}"):
            docs.append(json.loads(fields.get("signal") or fields["doc"]))
        out[stream] = docs
    return out


def reported(run_: CycleRun) -> dict[str, list[dict[str, Any]]]:
    """What a run said it published (and a replica confirmed), per stream."""
    doc = run_.doc()
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in STREAMS}
    for stream, name in STREAMS.items():
        value = doc.get(name)
        if isinstance(value, list):
            out[stream] = value
        elif isinstance(value, dict):
            out[stream] = [value]
    return out


@dataclass
class Verdict:
    """The checks of one scenario, with the figures the report shows."""

    figures: dict[str, Any] = field(default_factory=dict)


def check(runs: list[CycleRun], client: redis.Redis, prefix: str) -> Verdict:
    """Every run ended cleanly; nothing doubled, nothing reported published that the surviving
    master lacks; fencing tokens strictly increase from run to run; the last run healed."""
    verdict = Verdict()
    errors: list[str] = []
    unconfirmed = 0
    for r in runs:
        out, err = r.proc.stdout, r.proc.stderr
        assert r.code in (0, 1, 3), (r.code, out[-2000:], err[-2000:])
        assert not bad_lines(err), err[-3000:]
        assert "Traceback" not in out
        lines = [line for line in out.splitlines() if line.strip()]
        assert len(lines) == 1, out[-2000:]
        doc = json.loads(lines[0])
        assert doc["exit_code"] == r.code
        error_lines = [line for line in err.splitlines() if line.startswith("runner: error:")]
        assert len(error_lines) <= 1, error_lines
        if doc.get("error"):
            assert len(error_lines) == 1, err[-2000:]
            assert r.code == 3
            errors.append(error_lines[0])
        unconfirmed += sum(1 for x in doc.get("results") or [] if x["status"] == "unconfirmed")
    left = surviving(client, prefix)
    for stream, docs in left.items():
        ids = [d["id"] for d in docs]
        assert len(ids) == len(set(ids)), f"a document twice in {stream}: {Counter(ids).most_common(3)}"
        for r in runs:
            missing = {d["id"] for d in reported(r)[stream]} - set(ids)
            assert not missing, f"run {r.index} reported {sorted(missing)} published; {stream} lacks them"
    # Runs are one after another, so every token of a later run must exceed every earlier one's.
    by_cycle: dict[str, list[int]] = {}
    for docs in left.values():
        for d in docs:
            by_cycle.setdefault(d["cycle_id"], []).append(int(d["fencing_token"]))
    spans = [(min(t), max(t)) for _, t in sorted(by_cycle.items())]
    backwards = [(a, b) for a, b in itertools.pairwise(spans) if b[0] <= a[1]]
    assert not backwards, f"fencing tokens went backwards between runs: {backwards[:3]}"
    last = runs[-1]
    assert last.ok(), (last.code, last.proc.stdout[-2000:], last.proc.stderr[-2000:])
    assert lock_keys(client, prefix) == [], "the last run left locks behind"
    verdict.figures.update(
        runs=len(runs),
        exit_codes=dict(sorted(Counter(str(r.code) for r in runs).items())),
        unconfirmed_symbols=unconfirmed,
        surviving_signals=len(left["signals:raw"]),
        cycles_in_the_streams=len(spans),
    )
    if errors:
        verdict.figures["error_line"] = errors[0].removeprefix("runner: error: ")[:160]
    return verdict
