"""One cycle, end to end: the only module that knows the order of the steps.

run_cycle(settings, deps) -> Outcome
  1. start: identity, deadline, the store (a dry run's writes nothing)
  2. begin: heartbeat, lease, guard state (one script) and the guard decision (pure)
  3. select the symbols (paused, shard, max)
  4. lock them (one script) and run each symbol's chain of stages in a sliding window,
     publishing as it goes, then the cycle's advice and its report (``analysis.py``)
  5. conclude: record the outcome and release (one script), export the metrics (``record.py``)

Redis failing the cycle once it holds locks (the master moved or is gone) ends it at once
(``Control.abort``): what is done stays done, what can be released is released, and the outcome
is ``failed`` with the one line the CLI prints (exit 3). The core returns an ``Outcome``; only the
CLI turns it into an exit code.
"""

from __future__ import annotations

import logging

from runner import breaker, logs
from runner.analysis import Progress, Tally, analyze_all, report_step, symbol_result
from runner.chains import Chain
from runner.clock import Deadline
from runner.config import Settings
from runner.errors import Code, ExitCode
from runner.guards import Decision, decide
from runner.identity import new_cycle_id, resolve_instance_id, scheduled_minute
from runner.models import CycleStatus, Outcome, SymbolResult, SymbolStatus, decide_status
from runner.record import conclude, ended_by_redis
from runner.run import Control, Deps, Exports, Run
from runner.shards import Shard, select
from runner.store.cycle_store import CycleStore, DryRunStore, Holding
from runner.store.keys import Keys
from runner.store.locks import Owner

__all__ = ["Control", "Deps", "Exports", "run_cycle"]

log = logging.getLogger(__name__)


async def run_cycle(
    settings: Settings,
    deps: Deps,
    *,
    symbols: list[str] | None = None,
    shard: Shard | None = None,
    dry_run: bool = False,
    control: Control | None = None,
    progress: Progress | None = None,
    exports: Exports | None = None,
) -> Outcome:
    """Run one cycle and describe what happened. Raises only ``RedisUnavailable``."""
    control = control or Control(grace_seconds=settings.graceful_shutdown.timeout_seconds)
    run = start(settings, deps, shard or Shard(0, 1), dry_run, exports or Exports())
    control.attach(run.deadline)
    snap = await run.store.begin(run.started)
    for w in snap.warnings:
        log.warning("%s", w)
    decision = decide(snap, settings, run.started)
    if decision.skip_reason and dry_run:
        log.warning("dry run: a scheduled cycle would skip now (%s); analyzing anyway", decision.detail)
        decision = Decision(plan=decision.plan, gate=breaker.Gate(allow=True))
    candidates = symbols or settings.selected_symbols()
    selected, paused = select(candidates, snap.paused, run.shard, settings.max_symbols if symbols else None)
    paused_results = [symbol_result(s, SymbolStatus.PAUSED, Code.PAUSED, "paused") for s in paused]
    if decision.skip_reason:
        log.info("skipped: %s", decision.detail)
        outcome = skipped(run, decision.skip_reason, decision.detail, paused_results, snap.warnings)
        return await conclude(run, outcome, snap, decision)

    state, probes = snap.breaker, None
    if decision.gate.probes is not None:
        state, probes = await run.store.claim_probes(snap.breaker, len(selected), run.started.timestamp())
        if probes == 0:
            detail = "circuit breaker half-open: every probe call is taken by another run"
            return await conclude(run, skipped(run, "breaker_open", detail), snap, decision)
        if probes is not None:
            log.info("circuit breaker half-open: probing with %d call(s)", probes)

    tally = Tally(breaker_base=state, breaker=state)
    async with run.store.hold(selected, run.budget, control.abort) as holding:
        runnable = [s for s in selected if s in holding.locks and holding.locks[s].owned]
        if progress:
            progress("plan", str(len(runnable)), None)
        chains = await analyze_all(
            run,
            runnable,
            decision=decision,
            tally=tally,
            probes=probes,
            spent_today=snap.spend_usd,
            holding=holding,
            control=control,
            progress=progress,
        )
        report, report_record = await report_step(
            run,
            settle(run, selected, chains, holding),
            decision=decision,
            tally=tally,
            holding=holding,
            lease=snap.owned_lease,
            control=control,
        )
    results = settle(run, selected, chains, holding)  # again: the publisher has flushed everything now
    errors = holding.publisher.errors
    warnings = [*snap.warnings, *([f"publishing failed: {errors[0]}"] if errors else [])]
    report_record = report_record.settled()  # confirmed (or not) once the publisher closed
    if report is not None and not (report_record.ok and report_record.code is Code.OK):
        report = None
    if not report_record.ok and report_record.reason != "off":
        warnings.append(f"no report this cycle: {report_record.status.value} ({report_record.reason})")
    unconfirmed = [r for r in results if r.status is SymbolStatus.UNCONFIRMED]
    if unconfirmed:
        warnings.append(
            f"{len(unconfirmed)} symbol(s) published but not confirmed by a replica: "
            + "; ".join(f"{r.symbol} ({r.reason})" for r in unconfirmed[:5])
        )
    outcome = ran(run, results + paused_results, decision, tally, probes, warnings)
    outcome.report, outcome.report_status = report, report_record.status
    outcome.report_reason, outcome.report_ms = report_record.reason, report_record.duration_ms
    if control.aborted is not None:
        outcome = ended_by_redis(outcome, control.aborted)
    _log_outcome(outcome)
    return await conclude(run, outcome, snap, decision, tally=tally, locks=holding.locks)


def settle(run: Run, selected: list[str], chains: dict[str, Chain], holding: Holding) -> list[SymbolResult]:
    """Each selected symbol's result: its chain's, or ``locked`` when a live owner holds it."""
    now = run.deps.clock.monotonic()
    results = []
    for s in selected:
        if s in chains:
            results.append(chains[s].settle(now))
            continue
        if s not in holding.locks:  # the locks could not be taken
            results.append(symbol_result(s, SymbolStatus.FAILED, Code.REDIS, "redis: locks not taken"))
            continue
        holder = holding.locks[s].owner()
        held_by = f"held by {holder.get('instance_id', '?')} (cycle {holder.get('cycle_id', '?')})"
        results.append(symbol_result(s, SymbolStatus.LOCKED, Code.LOCKED, held_by))
    return results


def start(settings: Settings, deps: Deps, shard: Shard, dry_run: bool, exports: Exports) -> Run:
    """The facts of the cycle fixed at its start: who, when, which minute, until when, where."""
    clock = deps.clock
    started = clock.now()
    owner = Owner(resolve_instance_id(settings), new_cycle_id(started))
    logs.bind(cycle_id=owner.cycle_id, instance_id=owner.instance_id)
    keys = Keys.for_settings(settings)
    store_type = DryRunStore if dry_run else CycleStore
    return Run(
        settings=settings,
        deps=deps,
        owner=owner,
        shard=shard,
        minute=scheduled_minute(settings, started),
        started=started,
        t0=clock.monotonic(),
        deadline=Deadline(clock, settings.timeouts.total_timeout_seconds),
        keys=keys,
        store=store_type(deps.redis, keys, settings, shard.key, owner, clock, deps.replicas),
        exports=exports,
    )


def outcome_of(run: Run, status: CycleStatus, code: ExitCode, **fields: object) -> Outcome:
    """The cycle's outcome, stamped with its identity and duration."""
    return Outcome(
        cycle_id=run.owner.cycle_id,
        instance_id=run.owner.instance_id,
        shard=run.shard.label,
        status=status,
        exit_code=int(code),
        started_at=run.started,
        scheduled_minute=f"{run.minute:%Y-%m-%dT%H:%M}",
        duration_ms=run.elapsed_ms(),
        published=not run.dry_run,
        **fields,  # type: ignore[arg-type]
    )


def skipped(
    run: Run,
    reason: str,
    detail: str,
    results: list[SymbolResult] | None = None,
    warnings: list[str] | None = None,
) -> Outcome:
    """A cycle a guard skipped (exit 0)."""
    return outcome_of(
        run,
        CycleStatus.SKIPPED,
        ExitCode.OK,
        skip_reason=reason,
        skip_detail=detail,
        results=results or [],
        warnings=list(warnings or []),
    )


def ran(
    run: Run,
    results: list[SymbolResult],
    decision: Decision,
    tally: Tally,
    probes: int | None,
    warnings: list[str],
) -> Outcome:
    """A cycle that analyzed: its status from the symbols' results."""
    status, code, skip_reason = decide_status(results)
    signals = [r.signal for r in results if r.signal is not None]
    if not signals and any(r.code is Code.PUBLISH_FAILED for r in results):
        status, code = CycleStatus.FAILED, ExitCode.FAILED
    if tally.auth_failure and not any(r.status is SymbolStatus.OK for r in results):
        warnings.insert(0, tally.auth_failure)
    plan = decision.plan
    return outcome_of(
        run,
        status,
        code,
        skip_reason=skip_reason,
        skip_detail="every selected symbol is held by a live owner" if skip_reason == "all_locked" else None,
        signals=signals,
        scores=[r.score for r in results if r.score is not None],
        advice=[r.advice for r in results if r.advice is not None],
        results=results,
        warnings=warnings,
        stats={
            "concurrency": plan.concurrency,
            "symbol_timeout_seconds": plan.symbol_timeout,
            "p95_ms": plan.p95_ms,
            "p99_ms": plan.p99_ms,
            "probes": probes,
        },
    )


def _log_outcome(outcome: Outcome) -> None:
    """One line for the logs: how the cycle ended and, if not well, which symbols and why."""
    ok = sum(r.status is SymbolStatus.OK for r in outcome.results)
    line = (
        f"cycle {outcome.status.value}: {ok}/{len(outcome.results)} ok, "
        f"{len(outcome.signals)} signal(s) published in {outcome.duration_ms} ms"
    )
    trouble = [r for r in outcome.results if r.status not in (SymbolStatus.OK, SymbolStatus.PAUSED)]
    if trouble:
        line += "; " + "; ".join(f"{r.symbol} {r.status.value} ({r.reason})" for r in trouble[:10])
        if len(trouble) > 10:
            line += f"; and {len(trouble) - 10} more"
    done = outcome.status in (CycleStatus.COMPLETED, CycleStatus.SKIPPED)
    log.log(logging.INFO if done else logging.WARNING, "%s", line)
