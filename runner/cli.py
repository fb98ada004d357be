"""The ``runner`` command line (typer). Turns an Outcome into an exit code; rich output lives in
``render.py``. Every error reaches the user as one line on stderr with the right exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

# typer vendors click (pinned in pyproject); its exception types are only reachable here.
from typer._click import exceptions as click_exc

from runner import __version__
from runner.config import Settings, load_settings, parse_symbols, public_view
from runner.errors import ConfigError, DependencyError, ExitCode, RunnerError

if TYPE_CHECKING:
    # Annotations only: the modules behind them load when a command needs them.
    from runner.models import Outcome, SymbolResult
    from runner.shards import Shard
    from runner.state import StateStore

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
app.add_typer(kill_app, name="kill-switch")
app.add_typer(breaker_app, name="breaker")

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

    secrets = [
        s.get_secret_value() for s in (settings.analyzer.api_key, settings.analyzer.opencode_password) if s
    ]
    if settings.redis.url:
        from urllib.parse import urlsplit

        pw = urlsplit(settings.redis.url).password
        if pw:
            secrets.append(pw)
    logs.setup(settings.log_level, secrets)


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
    import runner.connection
    import runner.cycle  # noqa: F401

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
    from runner.clock import SystemClock
    from runner.connection import open_redis
    from runner.cycle import Control, Deps, run_cycle
    from runner.factory import build_analyzer, build_market

    handle = await open_redis(settings)
    if handle.embedded is not None:
        logging.getLogger("runner").info("using %s; set REDIS_URL to use a server", handle.description)
    analyzer = build_analyzer(settings)
    market = build_market(settings)
    control = Control(grace_seconds=settings.graceful_shutdown.timeout_seconds)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, control.stop)
    progress_cb = None
    bar: Any = None
    if not machine:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(
            TextColumn("analyzing"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=Console(stderr=True),
            transient=True,
        )
        task = bar.add_task("", total=None)

        def progress_cb(event: str, symbol: str, result: SymbolResult | None) -> None:
            if event == "plan":
                bar.update(task, total=int(symbol))
            elif event == "done":
                bar.update(task, advance=1, description=symbol)

        bar.start()
    deps = Deps(redis=handle.client, analyzer=analyzer, market=market, clock=SystemClock())
    try:
        outcome = await run_cycle(
            settings,
            deps,
            symbols=symbols,
            shard=shard,
            dry_run=dry_run,
            control=control,
            progress=progress_cb,
            metrics_file=str(metrics_file) if metrics_file else None,
        )
    finally:
        if bar is not None:
            bar.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        with contextlib.suppress(Exception):
            await analyzer.aclose()
        with contextlib.suppress(Exception):
            await market.aclose()
        await handle.aclose()
    if machine:
        print(outcome.model_dump_json(exclude={"stats"}))
    else:
        from rich.console import Console

        from runner import render

        render.print_cycle(Console(), outcome)
    return outcome


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[
        str, typer.Option("--host", help="Address for the health and metrics endpoints.")
    ] = "0.0.0.0",  # noqa: S104 - a pod serves its probes on all interfaces
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port for the endpoints.")] = 8080,
    shard: Annotated[
        str | None, typer.Option("--shard", help="This process's share of the symbols, I/N.")
    ] = None,
) -> None:
    """Run cycles on the configured cron schedule, with /health, /health/ready and /metrics."""
    from runner.serve import Service

    settings = settings_or_exit(config)
    shard_value = shard_or_exit(shard, settings)
    _setup_logs(settings)
    run_async(lambda: Service(settings, shard_value).run(host, port))


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
    from runner.connection import open_redis
    from runner.cycle import keys_for
    from runner.status import health, read_status

    handle = await open_redis(settings)
    try:
        now = datetime.now(UTC)
        doc = await read_status(handle.client, keys_for(settings), settings, now)
    finally:
        await handle.aclose()
    code, problems = health(doc, settings, now.timestamp())
    return doc, code, problems


async def _with_store(settings: Settings, action: Callable[[StateStore], Awaitable[T]]) -> T:
    from runner.connection import open_redis
    from runner.cycle import keys_for
    from runner.state import StateStore

    handle = await open_redis(settings)
    try:
        return await action(StateStore(handle.client, keys_for(settings)))
    finally:
        await handle.aclose()


@kill_app.command("on")
def kill_on(
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why; shown by `runner status`.")],
    config: ConfigOpt = None,
) -> None:
    """Halt all cycles until `runner kill-switch off`."""
    from runner.cycle import resolve_instance_id

    if not reason.strip():
        fail("--reason: must not be empty", ExitCode.USAGE)
    settings = settings_or_exit(config)
    by = resolve_instance_id(settings)
    run_async(
        lambda: _with_store(settings, lambda s: s.set_kill_switch(reason.strip(), by, datetime.now(UTC)))
    )
    print(f"kill switch ON: cycles skip until `runner kill-switch off` ({reason.strip()})")


@kill_app.command("off")
def kill_off(config: ConfigOpt = None) -> None:
    """Resume cycles."""
    settings = settings_or_exit(config)
    was_on = run_async(lambda: _with_store(settings, lambda s: s.clear_kill_switch()))
    print("kill switch off" if was_on else "kill switch was already off")


@app.command()
def resume(
    symbol: Annotated[str, typer.Argument(help="The paused symbol, e.g. ETH/USD.")],
    config: ConfigOpt = None,
) -> None:
    """Un-pause a symbol that was paused after repeated failures of its own."""
    try:
        (sym,) = parse_symbols(symbol)
    except (ConfigError, ValueError):
        fail(
            f"SYMBOL: must look like BASE/QUOTE in upper-case letters and digits (got {symbol!r})",
            ExitCode.USAGE,
        )
    settings = settings_or_exit(config)
    was = run_async(lambda: _with_store(settings, lambda s: s.resume(sym)))
    print(f"resumed {sym}" if was else f"{sym} was not paused")


@breaker_app.command("reset")
def breaker_reset(config: ConfigOpt = None) -> None:
    """Close the circuit breaker by hand."""
    settings = settings_or_exit(config)
    run_async(lambda: _with_store(settings, lambda s: s.reset_breaker(settings.circuit_breaker.llm_service)))
    print("circuit breaker closed")


@app.command()
def watch(
    config: ConfigOpt = None,
    last: Annotated[int, typer.Option("--last", min=0, help="Show this many recent signals first.")] = 10,
    json_out: JsonOpt = False,
) -> None:
    """Follow the signal stream live (Ctrl-C to stop)."""
    settings = settings_or_exit(config)
    with contextlib.suppress(KeyboardInterrupt):
        run_async(lambda: _watch(settings, last, json_out or not sys.stdout.isatty()))


async def _watch(settings: Settings, last: int, machine: bool) -> None:
    from rich.console import Console
    from rich.text import Text

    from runner.connection import open_redis, redis_errors
    from runner.cycle import keys_for
    from runner.render import ACTION_STYLE

    handle = await open_redis(settings)
    keys = keys_for(settings)
    console = Console()

    def show(fields: Any) -> None:
        raw = str(fields.get("signal", ""))
        if machine:
            print(raw, flush=True)
            return
        try:
            s = json.loads(raw)
        except ValueError:
            console.print(Text(f"unreadable entry: {raw[:80]}", style="red"))
            return
        line = Text(f"{str(s.get('generated_at', ''))[11:19]} {s.get('symbol', '?'):<10} ")
        line.append(f"{s.get('action', '?'):<4}", style=ACTION_STYLE.get(s.get("action"), ""))
        line.append(f" {float(s.get('confidence', 0)):.2f}  {s.get('reasoning', '')[:90]}")
        console.print(line)

    # Ctrl-C sets a flag the loop checks, within a read's block time: a cancellation that lands
    # as a read completes can be swallowed (redis-py's timeouts on Python 3.11), and the loop
    # would then follow the stream for ever.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        async with redis_errors("reading the signal stream"):
            recent: list[Any] = (
                list(await handle.client.xrevrange(keys.stream, count=last) or []) if last else []
            )
            for _, fields in reversed(recent):
                show(fields)
            cursor: Any = recent[0][0] if recent else "$"
        while not stop.is_set():
            try:
                async with redis_errors("following the signal stream"):
                    replies: Any = await handle.client.xread({keys.stream: cursor}, block=1000, count=100)
            except DependencyError:
                await asyncio.sleep(1)
                continue
            for _, entries in replies or []:
                for entry_id, fields in entries:
                    cursor = entry_id
                    show(fields)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        await handle.aclose()


@app.command("config")
def show_config(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Print the effective settings, secrets masked."""
    settings = settings_or_exit(config)
    view = {"autonomous_runner": public_view(settings)}
    if json_out or not sys.stdout.isatty():
        print(json.dumps(view, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(view, sort_keys=False), end="")


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
