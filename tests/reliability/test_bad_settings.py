"""Scenario 28 (settings and flags): every setting of the pipeline, risk, outcomes, notify, api and
archive sections, and the flags of the commands that came with them (serve, scorecard, history,
db, notify, watch), given a bad value.

The settings' own types and bounds are checked for every setting in-process by
test_bad_settings_model.py; the cases here are those that need the real console script and a
command that goes on (a backend without its model, a plugin that is not there, the flags), and
one of each section as a check that the script's path is the same.

Each case runs the real CLI once (four at a time, started together by a module fixture) with
Redis on a closed port, so a case that got past its settings would exit 3 instead; each
parametrized test checks its own run: exit 2, exactly one stderr line ``runner: error: ...``
naming the setting or flag, no traceback, no secret shown.
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, CliResult, cli_env, free_port
from tests.integration.helpers import assert_one_error_line

PG_PASSWORD = "pg-canary-5ecret"
TOKEN = "api-canary-token-0123456789"
HOOK_TOKEN = "hook-canary-9f8e7d"


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    needle: str


def case(*args: str, needle: str, **env: str) -> Case:
    return Case(args or ("cycle",), tuple(env.items()), needle)


def setting(name: str, value: str, needle: str | None = None, *args: str) -> Case:
    """``RUNNER_<NAME>=value`` for ``runner cycle``; the line must name the setting's dotted path."""
    dotted = name.lower().replace("__", ".")
    return Case(args or ("cycle",), ((f"RUNNER_{name}", value),), needle or dotted)


CASES: dict[str, Case] = {
    # --- pipeline --------------------------------------------------------------------------------
    "stages not starting with signal": setting("PIPELINE__STAGES", '["score"]', "pipeline.stages"),
    "stages empty": setting("PIPELINE__STAGES", "[]", "pipeline.stages"),
    "stages repeated": setting("PIPELINE__STAGES", '["signal","score","score"]', "pipeline.stages"),
    "stages out of order": setting("PIPELINE__STAGES", '["signal","advise","score"]', "pipeline.stages"),
    "stages unknown": setting("PIPELINE__STAGES", '["signal","report"]', "pipeline.stages"),
    "stages not JSON": setting("PIPELINE__STAGES", "signal,score", "pipeline"),
    "stages not a list": setting("PIPELINE__STAGES", '{"signal": 1}', "pipeline.stages"),
    "score backend unknown": setting("PIPELINE__SCORE__BACKEND", "gpt", "pipeline.score.backend"),
    "score timeout zero": setting("PIPELINE__SCORE__TIMEOUT_SECONDS", "0", "pipeline.score.timeout_seconds"),
    "report switch not a boolean": setting("PIPELINE__REPORT", "sometimes", "pipeline.report"),
    "score setting unknown": setting("PIPELINE__SCORE__TEMPERATURE", "1", "pipeline.score.temperature"),
    "pipeline setting unknown": setting("PIPELINE__STAGE", '["signal"]', "pipeline.stage"),
    "score plugin missing": case(needle="pipeline.score.plugin", RUNNER_PIPELINE__SCORE__BACKEND="plugin"),
    "score plugin not importable": case(
        needle="no_such_module",
        RUNNER_PIPELINE__SCORE__BACKEND="plugin",
        RUNNER_PIPELINE__SCORE__PLUGIN="no_such_module:make",
    ),
    "advise plugin without a factory": case(
        needle="pipeline.advise.plugin",
        RUNNER_PIPELINE__ADVISE__BACKEND="plugin",
        RUNNER_PIPELINE__ADVISE__PLUGIN="json:no_such_factory",
    ),
    "score on openai without a model": case(needle="model", RUNNER_PIPELINE__SCORE__BACKEND="openai"),
    "advise on opencode without a URL": case(
        needle="opencode", RUNNER_PIPELINE__ADVISE__BACKEND="opencode", RUNNER_PIPELINE__ADVISE__MODEL="p/m"
    ),
    "report on openai at OpenRouter without a key": case(
        needle="OPENROUTER_API_KEY",
        RUNNER_PIPELINE__REPORT__BACKEND="openai",
        RUNNER_PIPELINE__REPORT__MODEL="openai/gpt-4o-mini",
    ),
    # --- risk ------------------------------------------------------------------------------------
    "position size zero": setting("RISK__MAX_POSITION_SIZE_PCT", "0"),
    "positions zero": setting("RISK__MAX_POSITIONS", "0"),
    "risk setting unknown": setting("RISK__STOP_LOSS_PCT", "2", "risk.stop_loss_pct"),
    # --- outcomes --------------------------------------------------------------------------------
    "horizons empty": setting("OUTCOMES__HORIZONS_MINUTES", "[]"),
    "horizon zero": setting("OUTCOMES__HORIZONS_MINUTES", "[0, 5]"),
    "horizons not JSON": setting("OUTCOMES__HORIZONS_MINUTES", "5,15", "outcomes"),
    # --- notify ----------------------------------------------------------------------------------
    "notify URL of no service": setting("NOTIFY__URLS", f"slak://{HOOK_TOKEN}", "notify.urls[0]"),
    "notify URL not a URL": setting("NOTIFY__URLS", "hooks.example.com", "notify.urls[0]"),
    "notify second URL bad": setting(
        "NOTIFY__URLS", f"json://127.0.0.1:9/{HOOK_TOKEN},nope://{HOOK_TOKEN}", "notify.urls[1]"
    ),
    "notify URLs a JSON list of numbers": setting("NOTIFY__URLS", "[1, 2]", "notify.urls"),
    "notify URLs broken JSON": setting("NOTIFY__URLS", "[json://x", "notify.urls"),
    "notify timeout zero": setting("NOTIFY__TIMEOUT_SECONDS", "0"),
    "notify setting unknown": setting("NOTIFY__URL", "json://x", "notify.url"),
    # --- api -------------------------------------------------------------------------------------
    "ping zero": setting("API__SSE_PING_SECONDS", "0"),
    "api setting unknown": setting("API__PORT", "8080", "api.port"),
    # --- archive ---------------------------------------------------------------------------------
    "archive URL not PostgreSQL": case(
        needle="archive.postgres_url", POSTGRES_URL=f"mysql://u:{PG_PASSWORD}@db/archive"
    ),
    "archive URL with a bad port": case(
        needle="archive.postgres_url", POSTGRES_URL=f"postgresql://u:{PG_PASSWORD}@db:port/archive"
    ),
    "archive timeout zero": setting("ARCHIVE__TIMEOUT_SECONDS", "0"),
    "archive setting unknown": setting("ARCHIVE__SCHEMA", "x", "archive.schema"),
    # --- redis and market settings that came with them -------------------------------------------
    "replica ack timeout zero": setting("REDIS__REPLICA_ACK_TIMEOUT_SECONDS", "0"),
    "market source unknown": setting("MARKET__SOURCE", "binance"),
    "fallback models not JSON": setting("ANALYZER__FALLBACK_MODELS", "a,b", "analyzer"),
    "sentinel CA file missing": case(
        needle="ssl_ca_certs",
        REDIS_URL="rediss+sentinel://127.0.0.1:9/mymaster?ssl_ca_certs=/nonexistent/ca.pem",
    ),
    "cluster key file missing": case(
        needle="ssl_keyfile",
        REDIS_URL="rediss+cluster://127.0.0.1:9/?ssl_certfile=/etc/hostname&ssl_keyfile=/nonexistent/k.pem",
    ),
    # --- the new commands' flags -----------------------------------------------------------------
    "serve port not a number": case("serve", "--no-schedule", "--port", "http", needle="--port"),
    "serve port out of range": case("serve", "--no-schedule", "--port", "70000", needle="--port"),
    "serve host not an address": case("serve", "--no-schedule", "--host", "not a host!", needle="--host"),
    "serve host of no address": case("serve", "--no-schedule", "--host", "256.1.1.1", needle="--host"),
    "serve shard out of range": case("serve", "--no-schedule", "--shard", "3/2", needle="--shard"),
    "serve with a token ending in a newline": case(
        "serve", "--no-schedule", needle="api.token", RUNNER_API_TOKEN=TOKEN + "\n"
    ),
    "serve with a bad schedule": case("serve", needle="schedule", RUNNER_SCHEDULE="61 * * * *"),
    "serve with a bad setting": case(
        "serve", "--no-schedule", needle="api.sse_ping_seconds", RUNNER_API__SSE_PING_SECONDS="0"
    ),
    "scorecard horizon zero": case("scorecard", "--horizon", "0", needle="--horizon"),
    "scorecard horizon a word": case("scorecard", "--horizon", "soon", needle="--horizon"),
    "scorecard horizon over a day": case("scorecard", "--horizon", "1441", needle="--horizon"),
    "report switch a section that is not JSON": setting(
        "PIPELINE__REPORT", "{enabled: no", "pipeline.report"
    ),
    "stages not JSON, beside a good nested setting": case(
        needle="RUNNER_PIPELINE__STAGES",
        RUNNER_PIPELINE__STAGES="signal,score",
        RUNNER_PIPELINE__SCORE__BACKEND="builtin",
    ),
    "scorecard since a word": case("scorecard", "--since", "yesterday", needle="--since"),
    "scorecard symbol lower-case": case("scorecard", "--symbol", "eth/usd", needle="--symbol"),
    "scorecard model empty": case("scorecard", "--model", "", needle="--model"),
    "history stage unknown": case("history", "--stage", "trade", needle="--stage"),
    "history limit zero": case("history", "--limit", "0", needle="--limit"),
    "history since negative": case("history", "--since", "-7d", needle="--since"),
    "history symbol malformed": case("history", "--symbol", "ETH", needle="--symbol"),
    "db migrate without a URL": case("db", "migrate", needle="POSTGRES_URL"),
    "db status without a URL": case("db", "status", needle="POSTGRES_URL"),
    "db unknown subcommand": case("db", "drop", needle="drop"),
    "notify test with a bad URL": case(
        "notify", "test", needle="notify.urls[0]", RUNNER_NOTIFY__URLS="foo://x"
    ),
    "watch last negative": case("watch", "--last", "-1", needle="--last"),
    "watch stage unknown": case("watch", "--stage", "trade", needle="--stage"),
}


def _run(c: Case, directory: Path) -> tuple[CliResult, float]:
    env = cli_env(
        f"redis://127.0.0.1:{free_port()}/0", directory, **{"RUNNER_API_TOKEN": TOKEN, **dict(c.env)}
    )
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "runner", *c.args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired as exc:  # a case that got past its settings and kept running
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return CliResult(-9, out, err + "\n(killed after 60 s)"), time.monotonic() - started
    return CliResult(done.returncode, done.stdout, done.stderr), time.monotonic() - started


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[CliResult, float]]:
    """Every case run once, four at a time."""
    directory = tmp_path_factory.mktemp("bad-settings")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(_run, c, directory) for name, c in CASES.items()}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.scenario("28")
@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_setting_or_flag_exits_2_with_one_line(name, results, measure):
    """Exit 2 and exactly one stderr line `runner: error: ...` naming the setting (its dotted
    path) or the flag, no traceback, and no secret (the archive's password, the API token, a
    webhook's token) in the output."""
    res, took = results[name]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    shown = lines[0] if len(lines) == 1 else f"{len(lines)} lines, the last: {lines[-1] if lines else ''}"
    measure.figures(exit_code=res.code, took_s=round(took, 3), line=shown[:200])
    line = assert_one_error_line(res, 2)
    assert CASES[name].needle in line, line
    for secret in (PG_PASSWORD, TOKEN, HOOK_TOKEN):
        assert secret not in res.stdout + res.stderr


@pytest.mark.scenario("28")
def test_serve_on_a_port_in_use_exits_2_with_one_line(tmp_path: Path, measure):
    """`runner serve --port P` where something already listens on P: exit 2 and one line
    naming the flag and the address, no traceback (not a uvicorn error and a 0 or a 1)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res, took = _run(case("serve", "--no-schedule", "--port", str(port), needle="--port"), tmp_path)
    line = assert_one_error_line(res, 2)
    measure.figures(took_s=round(took, 3), line=line[:200])
    assert line == f"runner: error: --port: cannot listen on 127.0.0.1:{port} (Address already in use)"
    assert TOKEN not in res.stdout + res.stderr
