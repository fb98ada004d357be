"""The ``runner`` command line (typer). Turns an Outcome into an exit code; rich output lives in
``render.py``. Every error reaches the user as one line on stderr with the right exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

# typer vendors click (pinned in pyproject); its exception types are only reachable here.
from typer._click import exceptions as click_exc

from runner import __version__
from runner.config import Settings, load_settings, parse_symbols, public_view
from runner.errors import ConfigError, ExitCode, RunnerError

if TYPE_CHECKING:
    # Annotations only: the modules behind them load when a command needs them.
    from runner.analysis import Progress
    from runner.models import Outcome, SymbolResult
    from runner.operator import Change
    from runner.shards import Shard
    from runner.store.connection import Client

T = TypeVar("T")

app = typer.Typer(
    name="runner",
    help="One cycle of trading-signal generation per invocation, with its state in Redis.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
kill_app = typer.Typer(help="Halt (on) or resume (off) all cycles.", no_args_is_help=True)
breaker_app = typer.Typer(help="The analyzer's circuit breaker.", no_args_is_help=True)
notify_app = typer.Typer(help="Notifications to the notify.urls (Apprise URLs).", no_args_is_help=True)
db_app = typer.Typer(
    help="The PostgreSQL archive: create or upgrade its schema, show its version.", no_args_is_help=True
)
app.add_typer(kill_app, name="kill-switch")
app.add_typer(breaker_app, name="breaker")
app.add_typer(notify_app, name="notify")
app.add_typer(db_app, name="db")

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML settings file (root 'autonomous_runner:'); or RUNNER_CONFIG."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


def fail(message: str, code: ExitCode) -> NoReturn:
    """Print one line on stderr and exit."""
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    print(f"runner: error: {first}", file=sys.stderr)
    raise typer.Exit(int(code))


def settings_or_exit(config: Path | None, overrides: dict[str, Any] | None = None) -> Settings:
    try:
        return load_settings(config, overrides)
    except ConfigError as exc:
        fail(str(exc), ExitCode.USAGE)


def symbol_or_exit(symbol: str | None) -> str | None:
    """``--symbol`` validated; exit 2 when it is not one."""
    if symbol is None:
        return None
    try:
        (checked,) = parse_symbols(symbol)
    except (ConfigError, ValueError):
        fail(
            f"--symbol: must look like BASE/QUOTE in upper-case letters and digits (got {symbol!r})",
            ExitCode.USAGE,
        )
    return checked


def shard_or_exit(flag: str | None, settings: Settings) -> Shard:
    """``--shard``, else the Indexed Job's index of ``RUNNER_SHARDS``; exit 2 when unusable."""
    from runner.shards import from_environment

    try:
        return from_environment(flag, settings.shards, os.environ)
    except ConfigError as exc:
        fail(str(exc), ExitCode.USAGE)


def run_async(
    factory: Callable[[], Awaitable[T]], on_error: Callable[[str, ExitCode], None] | None = None
) -> T:
    """Run a coroutine, turning runner errors into one line and an exit code."""
    _end_startup()
    try:
        return asyncio.run(factory())  # type: ignore[arg-type]
    except RunnerError as exc:
        code = ExitCode.USAGE if isinstance(exc, ConfigError) else ExitCode.FAILED
        if on_error is not None:
            on_error(str(exc), code)
        fail(str(exc), code)


def _end_startup() -> None:
    """Collect garbage again, as the entry point turned the collector off while modules loaded.

    What start-up allocated lives until exit: frozen, the collector never walks it again.
    Nothing happens when the collector is on (the command line called from Python).
    """
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def _setup_logs(settings: Settings) -> None:
    from runner import logs
    from runner.redact import secret_values

    logs.setup(settings.log_level, secret_values(settings))


def _version(value: bool) -> None:
    if value:
        print(f"runner {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Turn market data into trading signals, one cycle per invocation."""


@app.command()
def cycle(
    symbols: Annotated[
        str | None, typer.Option("--symbols", "-s", help="Comma-separated, e.g. ETH/USD,BTC/USD.")
    ] = None,
    config: ConfigOpt = None,
    no_publish: Annotated[
        bool, typer.Option("--no-publish", help="Dry run: analyze and print, write nothing.")
    ] = False,
    json_out: JsonOpt = False,
    shard: Annotated[
        str | None, typer.Option("--shard", help="This run's share of the symbols, I/N.")
    ] = None,
    metrics_file: Annotated[
        Path | None,
        typer.Option("--metrics-file", help="Also write the metrics as a node_exporter textfile."),
    ] = None,
) -> None:
    """Run one cycle and exit 0 (completed or skipped), 1 (partial), 2 (usage) or 3 (failed)."""
    chosen = None
    if symbols is not None:
        try:
            chosen = parse_symbols(symbols)
        except ConfigError as exc:
            fail(str(exc), ExitCode.USAGE)
    settings = settings_or_exit(config)
    shard_value = shard_or_exit(shard, settings)
    _setup_logs(settings)
    machine = json_out or not sys.stdout.isatty()
    # Loaded here rather than in the coroutine so that they load as part of start-up.
    import runner.cycle
    import runner.factory  # noqa: F401

    def report(message: str, code: ExitCode) -> None:
        # Scripts reading stdout get a document even when the cycle could not run at all.
        if machine:
            print(json.dumps({"status": "failed", "exit_code": int(code), "error": message}))

    outcome = run_async(
        lambda: _cycle(settings, chosen, shard_value, no_publish, machine, metrics_file), on_error=report
    )
    raise typer.Exit(outcome.exit_code)


async def _cycle(
    settings: Settings,
    symbols: list[str] | None,
    shard: Shard,
    dry_run: bool,
    machine: bool,
    metrics_file: Path | None = None,
) -> Outcome:
    from runner.cycle import Control, Exports, run_cycle
    from runner.factory import open_deps

    control = Control(grace_seconds=settings.graceful_shutdown.timeout_seconds)
    loop = asyncio.get_running_loop()
    async with open_deps(settings) as deps, _progress_bar(machine) as progress_cb:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, control.stop)
        try:
            outcome = await run_cycle(
                settings,
                deps,
                symbols=symbols,
                shard=shard,
                dry_run=dry_run,
                control=control,
                progress=progress_cb,
                exports=Exports(metrics_file=str(metrics_file) if metrics_file else None),
            )
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    if machine:
        print(outcome.model_dump_json(exclude={"stats"}))
    else:
        from rich.console import Console

        from runner import render

        render.print_cycle(Console(), outcome)
    if outcome.error:  # Redis ended the cycle early: the one line that says why
        print(f"runner: error: {outcome.error}", file=sys.stderr)
    return outcome


@contextlib.asynccontextmanager
async def _progress_bar(machine: bool) -> AsyncIterator[Progress | None]:
    """A progress bar on stderr for people at a terminal; nothing for machines."""
    if machine:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    bar = Bar(
        TextColumn("analyzing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task("", total=None)

    def update(event: str, symbol: str, result: SymbolResult | None) -> None:
        if event == "plan":
            bar.update(task, total=int(symbol))
        elif event == "done":
            bar.update(task, advance=1, description=symbol)

    with bar:
        yield update


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (0.0.0.0 for every interface).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 8080,
    no_schedule: Annotated[
        bool,
        typer.Option("--no-schedule", help="Serve the dashboard and API only; run no scheduled cycles."),
    ] = False,
    shard: Annotated[
        str | None, typer.Option("--shard", help="This process's share of the symbols, I/N.")
    ] = None,
) -> None:
    """The dashboard, the HTTP API and cycles on the configured cron schedule (or none)."""
    settings = settings_or_exit(config)
    shard_value = shard_or_exit(shard, settings)
    _setup_logs(settings)

    async def serving() -> None:
        from runner.serve import Service

        await Service(settings, shard_value, schedule=not no_schedule).run(host, port)

    run_async(serving)


@app.command()
def status(
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    check: Annotated[bool, typer.Option("--check", help="Exit 0 healthy, 1 degraded, 3 unhealthy.")] = False,
) -> None:
    """Last cycles, breaker, cooldown, kill switch, adaptive state, locks, instances, symbols."""
    settings = settings_or_exit(config)
    _setup_logs(settings)
    doc, code, problems = run_async(lambda: _status(settings))
    if json_out or not sys.stdout.isatty():
        print(json.dumps({**doc, "health": {"code": code, "problems": problems}}, default=str))
    else:
        from rich.console import Console

        from runner import render

        Console().print(render.status_screen(doc, code, problems))
    raise typer.Exit(code if check else 0)


async def _status(settings: Settings) -> tuple[dict[str, Any], int, list[str]]:
    from runner.health import health
    from runner.store.connection import redis_session
    from runner.store.keys import Keys
    from runner.store.status import read_status

    async with redis_session(settings) as handle:
        now = datetime.now(UTC)
        keys = Keys.for_settings(settings)
        doc = await read_status(handle.client, keys, settings, now)
        doc["redis"] = await handle.describe(keys.fencing)
    code, problems = health(doc, settings, now.timestamp())
    return doc, code, problems


async def _with_client(settings: Settings, action: Callable[[Client], Awaitable[T]]) -> T:
    from runner.store.connection import redis_session

    async with redis_session(settings) as handle:
        return await action(handle.client)


def _operator(settings: Settings, change: Callable[[Client, str, datetime], Awaitable[Change]]) -> Change:
    """Run an operator change (``runner.operator``) and log its notification's warnings."""
    import logging

    from runner.identity import resolve_instance_id

    _setup_logs(settings)
    by = resolve_instance_id(settings)
    done = run_async(lambda: _with_client(settings, lambda c: change(c, by, datetime.now(UTC))))
    for warning in done.warnings:
        logging.getLogger("runner.operator").warning("%s", warning)
    return done


@kill_app.command("on")
def kill_on(
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why; shown by `runner status`.")],
    config: ConfigOpt = None,
) -> None:
    """Halt all cycles until `runner kill-switch off` (and notify the notify.urls)."""
    from runner import operator

    if not reason.strip():
        fail("--reason: must not be empty", ExitCode.USAGE)
    settings = settings_or_exit(config)
    why = reason.strip()
    done = _operator(
        settings,
        lambda c, by, now: operator.set_kill_switch(c, settings, on=True, reason=why, by=by, now=now),
    )
    suffix = "" if done.changed else "; it was already on: reason updated"
    print(f"kill switch ON: cycles skip until `runner kill-switch off` ({why}){suffix}")


@kill_app.command("off")
def kill_off(config: ConfigOpt = None) -> None:
    """Resume cycles (and notify the notify.urls)."""
    from runner import operator

    settings = settings_or_exit(config)
    done = _operator(
        settings, lambda c, by, now: operator.set_kill_switch(c, settings, on=False, by=by, now=now)
    )
    print("kill switch off" if done.changed else "kill switch was already off")


@app.command()
def resume(
    symbol: Annotated[str, typer.Argument(help="The paused symbol, e.g. ETH/USD.")],
    config: ConfigOpt = None,
) -> None:
    """Un-pause a symbol that was paused after repeated failures of its own."""
    from runner import operator

    try:
        (sym,) = parse_symbols(symbol)
    except (ConfigError, ValueError):
        fail(
            f"SYMBOL: must look like BASE/QUOTE in upper-case letters and digits (got {symbol!r})",
            ExitCode.USAGE,
        )
    settings = settings_or_exit(config)
    done = _operator(settings, lambda c, by, now: operator.resume(c, settings, sym, by=by, now=now))
    print(f"resumed {sym}" if done.changed else f"{sym} was not paused")


@breaker_app.command("reset")
def breaker_reset(config: ConfigOpt = None) -> None:
    """Close the circuit breaker by hand."""
    from runner import operator

    settings = settings_or_exit(config)
    done = _operator(settings, lambda c, by, now: operator.reset_breaker(c, settings, by=by, now=now))
    print("circuit breaker closed" if done.changed else "circuit breaker closed (it was not open)")


@notify_app.command("test")
def notify_test(config: ConfigOpt = None) -> None:
    """Send a test message to every notify.urls; exit 0 if all accepted it, else 3."""
    settings = settings_or_exit(config)
    if not settings.notify.urls:
        fail(
            "autonomous_runner.notify.urls: no URL to send to (set RUNNER_NOTIFY__URLS, e.g. "
            "json://host/path or slack://...)",
            ExitCode.USAGE,
        )
    _setup_logs(settings)
    from runner import delivery, notify
    from runner.identity import resolve_instance_id
    from runner.redact import secret_values

    notice = notify.test_notice(resolve_instance_id(settings), datetime.now(UTC).timestamp())
    sent = run_async(
        lambda: delivery.send(
            delivery.targets(settings),
            notice.title,
            notice.body,
            notice.kind,
            settings.notify.timeout_seconds,
            secret_values(settings),
        )
    )
    for answer in sent:
        if answer.ok:
            print(f"{answer.target.label}: accepted")
        else:
            print(f"runner: error: {answer.target.label}: {answer.error}", file=sys.stderr)
    raise typer.Exit(int(ExitCode.OK if all(a.ok for a in sent) else ExitCode.FAILED))


@app.command()
def watch(
    config: ConfigOpt = None,
    last: Annotated[
        int, typer.Option("--last", min=0, help="Show this many recent entries of each stage first.")
    ] = 10,
    stage: Annotated[
        list[str] | None,
        typer.Option("--stage", help="Follow only this stage (signal, score, advice, report); repeatable."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Follow every stage live: signals, scores, advice and reports (Ctrl-C to stop)."""
    wanted = set(stage or WATCHED)
    unknown = sorted(wanted - set(WATCHED))
    if unknown:
        fail(f"--stage: must be one of {', '.join(WATCHED)} (got {unknown[0]!r})", ExitCode.USAGE)
    settings = settings_or_exit(config)
    with contextlib.suppress(KeyboardInterrupt):
        run_async(lambda: _watch(settings, last, json_out or not sys.stdout.isatty(), wanted))


WATCHED = ("signal", "score", "advice", "report")


async def _watch(settings: Settings, last: int, machine: bool, wanted: set[str]) -> None:
    from rich.console import Console
    from rich.text import Text

    from runner.render import ACTION_STYLE
    from runner.store import streams
    from runner.store.connection import redis_session
    from runner.store.keys import Keys

    console = Console()
    keys = Keys.for_settings(settings)
    every = {
        keys.stream: "signal",
        keys.scored_stream: "score",
        keys.advised_stream: "advice",
        keys.reports_stream: "report",
    }
    stage_of = {stream: stage for stream, stage in every.items() if stage in wanted}

    def show(stage: str, fields: dict[str, Any]) -> None:
        raw = str(fields.get("signal" if stage == "signal" else "doc", ""))
        if machine:
            print(raw, flush=True)
            return
        try:
            d = json.loads(raw)
        except ValueError:
            console.print(Text(f"unreadable {stage} entry: {raw[:80]}", style="red"))
            return
        line = Text(
            f"{str(d.get('generated_at', ''))[11:19]} {stage:<6} {d.get('symbol', d.get('shard', '?')):<10} "
        )
        if stage == "signal":
            line.append(f"{d.get('action', '?'):<4}", style=ACTION_STYLE.get(d.get("action"), ""))
            line.append(f" {float(d.get('confidence', 0)):.2f}  {d.get('reasoning', '')[:90]}")
        elif stage == "score":
            line.append(f"{d.get('score')} {d.get('grade')}  {'; '.join(d.get('factors') or [])[:90]}")
        elif stage == "advice":
            line.append(f"{d.get('action', '?'):<4}", style=ACTION_STYLE.get(d.get("action"), ""))
            line.append(
                f" {float(d.get('position_size_pct') or 0):.3g}% entry {d.get('entry')} "
                f"stop {d.get('stop_loss')} target {d.get('take_profit')}"
            )
        else:
            line.append(str(d.get("summary", "")).splitlines()[0][:120] if d.get("summary") else "")
        console.print(line)

    # Ctrl-C sets a flag the loop checks, within a read's block time: a cancellation that lands
    # as a read completes can be swallowed (redis-py's timeouts on Python 3.11), and the loop
    # would then follow the streams for ever.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with redis_session(settings) as handle:
        cursors: dict[str, str] = {}
        recent = []
        for stream, stage in stage_of.items():
            entries = await streams.latest(handle.client, stream, last)
            recent += [(entry_id, stage, fields) for entry_id, fields in entries]
            cursors[stream] = entries[-1][0] if entries else await streams.end_of(handle.client, stream)
        for _, stage, fields in sorted(recent, key=lambda e: tuple(int(p) for p in e[0].split("-"))):
            show(stage, fields)
        try:
            async for stream, _, fields in streams.follow(handle.client, cursors, stop):
                show(stage_of[stream], fields)
        finally:
            loop.remove_signal_handler(signal.SIGINT)


@app.command()
def scorecard(
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    symbol: Annotated[str | None, typer.Option("--symbol", help="Only this symbol, e.g. ETH/USD.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Only signals of this model.")] = None,
    horizon: Annotated[
        int | None, typer.Option("--horizon", min=1, max=1440, help="Only this horizon, in minutes.")
    ] = None,
    since: Annotated[str, typer.Option("--since", help="How far back: 7d, 2w, or all that is kept.")] = "all",
) -> None:
    """How good the signals were: hit rate, return against buy-and-hold, Brier score, calibration."""
    from runner.outcomes import Filters, parse_since

    symbol = symbol_or_exit(symbol)
    if model is not None and not model.strip():
        fail("--model: must not be empty (leave it out for every model)", ExitCode.USAGE)
    try:
        days = None if since.strip().lower() == "all" else parse_since(since, 1_000_000)
    except ConfigError as exc:
        fail(str(exc), ExitCode.USAGE)
    settings = settings_or_exit(config)
    _setup_logs(settings)
    from runner.scorecard import build

    filters = Filters(symbol, model, horizon)
    doc = run_async(lambda: build(settings, filters, days, datetime.now(UTC)))
    doc["since"] = since
    if json_out or not sys.stdout.isatty():
        print(json.dumps(doc))
    else:
        from rich.console import Console

        from runner import render

        Console().print(render.scorecard_screen(doc))


#: Seconds a command's reads of the archive may take.
READ_SECONDS = 30.0
STAGES = ("signal", "score", "advice", "report", "outcome")


def archive_url_or_exit(settings: Settings) -> str:
    """The archive's URL; exit 2 when none is configured."""
    if settings.archive.postgres_url is None:
        fail("archive.postgres_url (POSTGRES_URL): not set; this command needs the archive", ExitCode.USAGE)
    return settings.archive.postgres_url.get_secret_value()


@db_app.command("migrate")
def db_migrate(
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds the migration may take.")
    ] = 300.0,
) -> None:
    """Create the archive's schema, or upgrade it to this runner's version (idempotent)."""
    from runner.archive import postgres

    settings = settings_or_exit(config)
    _setup_logs(settings)
    url = archive_url_or_exit(settings)
    done = run_async(lambda: postgres.migrate(url, timeout))
    if json_out or not sys.stdout.isatty():
        print(json.dumps({"before": done.before, "version": done.after, "applied": done.applied}))
    elif done.applied:
        applied = ", ".join(map(str, done.applied))
        print(f"archive schema at version {done.after} (was {done.before}; applied {applied})")
    else:
        print(f"archive schema already at version {done.after}: nothing to do")


@db_app.command("status")
def db_status(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """The archive's schema version and whether this runner can write to it (exit 0 yes, 1 no)."""
    from runner.archive import postgres
    from runner.config import redact_dsn

    settings = settings_or_exit(config)
    _setup_logs(settings)
    url = archive_url_or_exit(settings)
    doc = run_async(lambda: postgres.describe(url, READ_SECONDS))
    if json_out or not sys.stdout.isatty():
        print(json.dumps({"url": redact_dsn(url), **doc}))
    else:
        version = doc["version"] if doc["version"] is not None else "none"
        verdict = "writable" if doc["writable"] else "NOT writable"
        print(f"archive: {redact_dsn(url)} (database {doc['database']}, role {doc['role']})")
        print(f"schema version {version}; this runner writes version {doc['latest']}: {verdict}")
        for problem in doc["problems"]:
            print(f"  {problem}")
        tables = ", ".join(
            f"{name} ~{t['rows_estimate'] if t['rows_estimate'] is not None else '?'}"
            for name, t in doc["tables"].items()
            if name != "schema_migrations"
        )
        if tables:
            print(f"rows (estimates): {tables}")
    raise typer.Exit(0 if doc["writable"] else 1)


@app.command()
def history(
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    symbol: Annotated[str | None, typer.Option("--symbol", help="Only this symbol, e.g. ETH/USD.")] = None,
    stage: Annotated[
        str | None, typer.Option("--stage", help="Only this stage: signal, score, advice, report or outcome.")
    ] = None,
    since: Annotated[str, typer.Option("--since", help="How far back: 12h, 7d, 2w or all.")] = "all",
    limit: Annotated[int, typer.Option("--limit", min=1, max=100_000, help="At most this many.")] = 100,
) -> None:
    """Published documents, newest first: from the PostgreSQL archive when it is configured, else
    from the Redis streams (only what they still hold)."""
    from runner.archive.rows import parse_age

    if stage is not None and stage not in STAGES:
        fail(f"--stage: must be one of {', '.join(STAGES)} (got {stage!r})", ExitCode.USAGE)
    symbol = symbol_or_exit(symbol)
    try:
        age = parse_age(since)
    except ConfigError as exc:
        fail(str(exc), ExitCode.USAGE)
    settings = settings_or_exit(config)
    _setup_logs(settings)
    stages = [stage] if stage else list(STAGES)
    start = datetime.now(UTC) - age if age is not None else None
    doc = run_async(lambda: _history(settings, stages, symbol, start, limit))
    doc["since"] = since
    if json_out or not sys.stdout.isatty():
        print(json.dumps(doc, default=str))
    else:
        from rich.console import Console

        from runner import render

        Console().print(render.history_screen(doc))


def _wanted(doc: dict[str, Any] | None, symbol: str | None) -> bool:
    return doc is not None and (symbol is None or doc["symbol"] == symbol)


async def _history(
    settings: Settings, stages: list[str], symbol: str | None, start: datetime | None, limit: int
) -> dict[str, Any]:
    if settings.archive.postgres_url is not None:
        from runner.archive import postgres

        docs = await postgres.history(
            settings.archive.postgres_url.get_secret_value(),
            stages,
            symbol=symbol,
            since=start,
            limit=limit,
            seconds=READ_SECONDS,
        )
        return {"source": "postgres", "note": None, "count": len(docs), "documents": docs}
    from runner.archive.rows import STAGE_FIELDS, history_doc
    from runner.store import streams
    from runner.store.connection import redis_session
    from runner.store.keys import Keys

    keys = Keys.for_settings(settings)
    found: list[dict[str, Any]] = []

    def parsed(stage: str, entry_id: str, fields: dict[str, Any]) -> dict[str, Any] | None:
        try:
            doc = json.loads(fields.get(STAGE_FIELDS[stage], ""))
        except ValueError:
            return None
        return history_doc(stage, entry_id, doc) if isinstance(doc, dict) else None

    async with redis_session(settings) as handle:
        for stage in stages:
            if stage == "report" and symbol is not None:
                continue

            def keep(entry_id: str, fields: dict[str, Any], stage: str = stage) -> bool:
                return _wanted(parsed(stage, entry_id, fields), symbol)

            entries = await streams.newest(
                handle.client,
                keys.stage_streams()[stage],
                since_ms=int(start.timestamp() * 1000) if start else None,
                count=limit,
                keep=keep,
            )
            found += [d for d in (parsed(stage, i, f) for i, f in entries) if d is not None]
    found.sort(key=lambda d: (d["minute"], d["published_at"]), reverse=True)
    note = (
        "from the Redis streams: only what they still hold (each is capped); "
        "set POSTGRES_URL to read the archive"
    )
    return {"source": "redis", "note": note, "count": len(found[:limit]), "documents": found[:limit]}


@app.command("config")
def show_config(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Print the effective settings, secrets masked."""
    settings = settings_or_exit(config)
    view: dict[str, Any] = {"autonomous_runner": public_view(settings)}
    if settings.redis.url:
        # Which node is the master now, asked within the socket timeout; config still prints
        # when Redis cannot be reached (it says why).
        view["redis_master"] = run_async(lambda: _master_now(settings))
    if json_out or not sys.stdout.isatty():
        print(json.dumps(view, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(view, sort_keys=False), end="")


async def _master_now(settings: Settings) -> dict[str, Any]:
    from runner.errors import RedisUnavailable
    from runner.store.connection import redis_session
    from runner.store.keys import Keys

    try:
        async with redis_session(settings) as handle:
            return await handle.describe(Keys.for_settings(settings).fencing)
    except RedisUnavailable as exc:
        return {"topology": settings.redis.topology().value, "error": str(exc)}


def main() -> None:
    """Entry point: click's usage errors become one line and exit 2."""
    command = typer.main.get_command(app)
    try:
        code = command.main(prog_name="runner", standalone_mode=False)
    except click_exc.UsageError as exc:
        fail_line = exc.format_message().strip().splitlines()[0]
        ctx = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        print(f"runner: error: {fail_line}{ctx}", file=sys.stderr)
        sys.exit(int(ExitCode.USAGE))
    except (typer.Abort, KeyboardInterrupt):
        print("runner: aborted", file=sys.stderr)
        sys.exit(130)
    except click_exc.ClickException as exc:
        print(f"runner: error: {exc.format_message()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
