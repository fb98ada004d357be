"""The PostgreSQL archive, end to end: the ``runner`` CLI as a subprocess against a real
redis-server and a real PostgreSQL server (one per session, a database per test), stopped,
frozen and restarted on purpose.

What an operator would check: every document is in the archive once, whatever re-ran or retried;
a database that is down or slow costs one warning and never the cycle, and what it missed arrives
later; the schema is created, upgraded and refused when newer; a gap the stream cap opened is
reported; the README's grants are enough; no password is ever printed.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
from datetime import UTC, datetime
from pathlib import Path

import pytest

from runner.archive import postgres as archive_pg
from runner.archive.schema import BOOTSTRAP, LATEST, MIGRATIONS, TABLES, write_statement
from tests.conftest import PG_ADMIN_PASSWORD, run_cli, start_cli
from tests.integration.helpers import (
    assert_one_error_line,
    counter_totals,
    env_for,
    finish,
    scheduled_now,
    stream_signals,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
SYMBOLS = "ETH/USD,BTC/USD"
STREAMS = {
    "signal": ("signals:raw", "signal"),
    "score": ("signals:scored", "doc"),
    "advice": ("signals:advised", "doc"),
    "report": ("reports:cycle", "doc"),
    "outcome": ("signals:outcomes", "doc"),
}


def pg_env(redis_server, tmp_path, url, **extra):
    """A runner environment with the archive, and time enough that only a test that means it
    runs out of it."""
    values = {
        "POSTGRES_URL": url,
        "RUNNER_TIMEOUTS__TOTAL_TIMEOUT_SECONDS": "30",
        "RUNNER_ARCHIVE__TIMEOUT_SECONDS": "20",
        **extra,
    }
    return env_for(redis_server.url, tmp_path, **values)


def cycle(env, minute=None, symbols=SYMBOLS, **extra):
    """One ``runner cycle --json`` (for ``minute``, a scheduled timestamp, when given)."""
    run_env = {**env, **extra, **({"RUNNER_SCHEDULED_AT": minute} if minute else {})}
    res = run_cli(["cycle", "--symbols", symbols, "--json"], run_env)
    assert "Traceback" not in res.stderr, res.stderr
    return res


def archive_warnings(res):
    return [w for w in res.json()["warnings"] if "archive" in w]


def migrate(url):
    return asyncio.run(archive_pg.migrate(url, 60))


def archived(postgres, database, stage):
    """Every document archived for ``stage``: id -> doc."""
    table, key = TABLES[stage].name, TABLES[stage].key
    return {row[0]: row[1] for row in postgres.sql(f"SELECT {key}, doc FROM archive.{table}", database)}


def in_redis(client, stage):
    """Every document the stream of ``stage`` still holds: id -> doc."""
    stream, field = STREAMS[stage]
    docs = [json.loads(fields[field]) for _, fields in client.xrange(stream)]
    return {d["id"]: d for d in docs}


def assert_archive_holds_what_redis_held(postgres, database, client):
    for stage in STREAMS:
        assert archived(postgres, database, stage) == in_redis(client, stage), stage
    cycles = {json.loads(s)["cycle_id"] for s in client.lrange("runner:history", 0, -1)}
    assert set(archived(postgres, database, "cycle")) == cycles


# --- the schema --------------------------------------------------------------------------------


def test_migrate_creates_the_schema_once_and_status_says_it_is_writable(
    real_redis, redis_server, postgres, pg_database, tmp_path
):
    env = pg_env(redis_server, tmp_path, postgres.url(pg_database))

    before = run_cli(["db", "status", "--json"], env)
    first = run_cli(["db", "migrate", "--json"], env)
    again = run_cli(["db", "migrate", "--json"], env)
    after = run_cli(["db", "status", "--json"], env)

    assert before.code == 1, before.stderr
    assert before.json()["writable"] is False
    assert "run `runner db migrate`" in before.json()["problems"][0]
    assert first.code == 0, first.stderr
    assert first.json() == {"before": 0, "version": LATEST, "applied": [m.version for m in MIGRATIONS]}
    assert again.json() == {"before": LATEST, "version": LATEST, "applied": []}
    assert after.code == 0, after.stderr
    status = after.json()
    assert (status["version"], status["writable"], status["problems"]) == (LATEST, True, [])
    # Every column the runner writes is there, with its type.
    for table in TABLES.values():
        columns = postgres.sql(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'archive' AND table_name = %s",
            pg_database,
            (table.name,),
        )
        types = {name: "timestamptz" if kind.startswith("timestamp") else kind for name, kind in columns}
        assert {c: types.get(c) for c, _ in table.columns} == dict(table.columns), table.name
    indexes = {
        r[0]
        for r in postgres.sql("SELECT indexname FROM pg_indexes WHERE schemaname = 'archive'", pg_database)
    }
    assert {"signals_symbol_minute", "signals_minute", "outcomes_matured_at", "cycles_started_at"} <= indexes


def test_the_write_is_one_round_trip(postgres, pg_database, tmp_path):
    url = postgres.url(pg_database)
    migrate(url)
    trace = tmp_path / "protocol.trace"

    async def write_traced() -> None:
        async with archive_pg.session(url, 30) as s:
            with trace.open("w", encoding="utf-8") as fh:
                s.conn.pgconn.trace(fh.fileno())
                await s.fetch(write_statement(), {"batch": "{}"}, 30, "the archive write")
                s.conn.pgconn.untrace()

    asyncio.run(write_traced())

    # libpq's trace: F for each message the client sends, B for each the server sends. Every
    # message of the write goes out before the first answer comes back: one round trip.
    directions = "".join(line.split("\t")[1] for line in trace.read_text().splitlines() if "\t" in line)
    assert re.fullmatch(r"F{4,}B+", directions), directions


# --- every document, once -----------------------------------------------------------------------


def test_every_document_is_archived_once_across_reruns_and_retries(
    real_redis, redis_server, postgres, pg_database, tmp_path
):
    migrate(postgres.url(pg_database))
    env = pg_env(redis_server, tmp_path, postgres.url(pg_database), RUNNER_OUTCOMES__HORIZONS_MINUTES="[1]")
    at = datetime.now(UTC)

    runs = [
        cycle(env, scheduled_now(-2, at)),
        cycle(env, scheduled_now(-2, at)),  # a re-run of the same minute: publishes nothing new
        cycle(env, scheduled_now(-1, at)),
    ]
    real_redis.delete("runner:archive")  # a retry that lost its progress: copies everything again
    runs.append(cycle(env, scheduled_now(0, at)))

    for res in runs:
        assert res.code == 0, res.stderr
        assert archive_warnings(res) == []
    assert_archive_holds_what_redis_held(postgres, pg_database, real_redis)
    assert len(archived(postgres, pg_database, "signal")) == 6  # 2 symbols x 3 minutes
    assert len(archived(postgres, pg_database, "outcome")) == 4  # minutes -2 and -1, at 1 minute
    assert len(archived(postgres, pg_database, "cycle")) == 4
    totals = counter_totals(real_redis)
    assert totals['archive_writes_total{result="ok"}'] == 4
    assert totals['archive_documents_total{stage="signal"}'] == 6
    row = postgres.sql(
        "SELECT symbol, action, confidence, model, fencing_token, minute FROM archive.signals "
        "WHERE symbol = 'ETH/USD' ORDER BY minute LIMIT 1",
        pg_database,
    )[0]
    first = next(s for s in stream_signals(real_redis) if s["symbol"] == "ETH/USD")
    assert row[:5] == (
        "ETH/USD",
        first["action"],
        first["confidence"],
        first["model"],
        first["fencing_token"],
    )
    assert row[5].strftime("%Y-%m-%dT%H:%M") == first["id"].split(":", 1)[1]


def test_two_shards_archiving_at_once_write_each_document_once(
    real_redis, redis_server, postgres, pg_database, tmp_path
):
    migrate(postgres.url(pg_database))
    env = pg_env(redis_server, tmp_path, postgres.url(pg_database), RUNNER_SHARDS="2")
    args = ["cycle", "--symbols", "ETH/USD,BTC/USD,SOL/USD,DOGE/USD", "--json"]

    procs = [start_cli([*args, "--shard", f"{i}/2"], {**env, "INSTANCE_ID": f"pod-{i}"}) for i in range(2)]
    results = [finish(p, timeout=90) for p in procs]

    for res in results:
        assert res.code == 0, res.stderr
        assert archive_warnings(res) == []
    # Whichever shard read last found both shards' documents; neither wrote one twice.
    assert_archive_holds_what_redis_held(postgres, pg_database, real_redis)
    assert len(archived(postgres, pg_database, "signal")) == 4


def test_a_dry_run_archives_nothing(real_redis, redis_server, postgres, pg_database, tmp_path):
    migrate(postgres.url(pg_database))
    env = pg_env(redis_server, tmp_path, postgres.url(pg_database))

    res = run_cli(["cycle", "--symbols", SYMBOLS, "--no-publish", "--json"], env)

    assert res.code == 0, res.stderr
    assert res.json()["signals"]
    for table in TABLES.values():
        assert postgres.sql(f"SELECT count(*) FROM archive.{table.name}", pg_database) == [(0,)]
    assert real_redis.dbsize() == 0


# --- PostgreSQL down or slow ------------------------------------------------------------------


def test_the_database_stopped_during_a_cycle_costs_one_warning_and_the_rows_arrive_later(
    real_redis, redis_server, postgres, pg_database, tmp_path
):
    migrate(postgres.url(pg_database))
    gate, started = tmp_path / "gate", tmp_path / "started"
    env = pg_env(
        redis_server,
        tmp_path,
        postgres.url(pg_database),
        SCRIPTED_FAIL="BTC/USD",  # a partial cycle: exit 1, with or without the archive
        SCRIPTED_GATE=str(gate),
        SCRIPTED_LOG=str(started),
    )
    at = datetime.now(UTC)

    proc = start_cli(
        ["cycle", "--symbols", SYMBOLS, "--json"], {**env, "RUNNER_SCHEDULED_AT": scheduled_now(-1, at)}
    )
    wait_until(lambda: started.exists() and len(started.read_text().split()) >= 2, timeout=60)
    postgres.stop()
    gate.touch()
    down = finish(proc, timeout=90)

    assert down.code == 1, down.stderr
    assert down.json()["status"] == "partial"
    (warning,) = archive_warnings(down)
    assert "PostgreSQL" in warning
    assert "later run" in warning
    assert real_redis.xlen("signals:raw") == 1
    assert counter_totals(real_redis)['archive_writes_total{result="error"}'] == 1

    postgres.start()
    up = cycle(env, scheduled_now(0, at))

    assert up.code == 1, up.stderr
    assert archive_warnings(up) == []
    assert_archive_holds_what_redis_held(postgres, pg_database, real_redis)
    assert len(archived(postgres, pg_database, "signal")) == 2  # ETH/USD of both minutes
    status = run_cli(["status", "--json"], env).json()
    assert status["archive"]["result"] == "ok"


def test_a_frozen_database_is_given_up_on_within_the_archive_timeout(
    real_redis, redis_server, postgres, pg_database, tmp_path
):
    migrate(postgres.url(pg_database))
    env = pg_env(redis_server, tmp_path, postgres.url(pg_database), RUNNER_ARCHIVE__TIMEOUT_SECONDS="1")
    at = datetime.now(UTC)

    os.kill(postgres.pid(), signal.SIGSTOP)  # accepts connections, never answers
    try:
        frozen = cycle(env, scheduled_now(-1, at))
    finally:
        os.kill(postgres.pid(), signal.SIGCONT)

    assert frozen.code == 0, frozen.stderr
    (warning,) = archive_warnings(frozen)
    assert "did not answer" in warning
    assert counter_totals(real_redis)['archive_writes_total{result="timeout"}'] == 1
    status = run_cli(["status", "--json"], env).json()
    assert status["archive"]["result"] == "timeout"
    assert "archive write timeout" in " ".join(status["health"]["problems"])

    later = cycle(env, scheduled_now(0, at), RUNNER_ARCHIVE__TIMEOUT_SECONDS="20")

    assert archive_warnings(later) == []
    assert_archive_holds_what_redis_held(postgres, pg_database, real_redis)


def test_a_gap_the_stream_cap_opened_while_the_database_was_down_is_reported(
    real_redis, redis_server, postgres, pg_database, tmp_path
):
    migrate(postgres.url(pg_database))
    env = pg_env(redis_server, tmp_path, postgres.url(pg_database), RUNNER_PUBLISH__STREAM_MAXLEN="2")
    at = datetime.now(UTC)
    assert cycle(env, scheduled_now(-4, at)).code == 0  # archived: the cursors are set
    node_size = real_redis.config_get("stream-node-max-entries")["stream-node-max-entries"]
    real_redis.config_set("stream-node-max-entries", "2")  # so that MAXLEN ~ 2 trims at once
    try:
        postgres.stop()
        runs = [cycle(env, scheduled_now(minute, at)) for minute in (-3, -2, -1)]
        postgres.start()
        runs += [cycle(env, scheduled_now(0, at)), cycle(env, scheduled_now(0, at))]
    finally:
        real_redis.config_set("stream-node-max-entries", node_size)

    assert [r.code for r in runs] == [0] * 5
    told = [w for r in runs for w in archive_warnings(r) if w.startswith("archive gap: signals:raw")]
    assert len(told) == 1, "a gap is told once, by the first run that finds it"
    assert archive_warnings(runs[-1]) == []
    totals = counter_totals(real_redis)
    assert totals['archive_gap_total{stage="signal"}'] == 1
    # What the stream still held is archived; what it dropped is reported, not hidden.
    held = in_redis(real_redis, "signal")
    assert set(held) <= set(archived(postgres, pg_database, "signal"))
    assert len(archived(postgres, pg_database, "signal")) < 2 * 5
    status = run_cli(["status", "--json"], env)
    doc = status.json()
    assert "signal" in doc["archive"]["gaps"]
    from rich.console import Console

    from runner import render

    console = Console(file=io.StringIO(), width=300)
    console.print(render.status_screen(doc, doc["health"]["code"], doc["health"]["problems"]))
    screen = console.file.getvalue()
    assert re.search(
        r"archive gap in signal: \d+ entries between .+ were dropped by the stream cap", screen
    ), screen


# --- schema versions ---------------------------------------------------------------------------


def test_a_first_version_schema_is_refused_until_migrated_and_then_caught_up(
    real_redis, redis_server, postgres, pg_database, tmp_path
):
    postgres.sql(BOOTSTRAP + MIGRATIONS[0].sql, pg_database)
    postgres.sql("INSERT INTO archive.schema_migrations (version, name) VALUES (1, 'v1')", pg_database)
    postgres.sql(  # a document a runner of the first version archived
        "INSERT INTO archive.signals (id, symbol, minute, action, published_at, doc) "
        "VALUES ('ETH/USD:2026-01-01T00:00', 'ETH/USD', '2026-01-01T00:00Z', 'BUY', now(), '{}')",
        pg_database,
    )
    env = pg_env(redis_server, tmp_path, postgres.url(pg_database))
    at = datetime.now(UTC)

    refused = cycle(env, scheduled_now(-1, at))
    status = run_cli(["db", "status", "--json"], env)
    migrated = run_cli(["db", "migrate", "--json"], env)
    caught_up = cycle(env, scheduled_now(0, at))

    assert refused.code == 0, refused.stderr
    (warning,) = archive_warnings(refused)
    assert f"at version 1 and this runner writes version {LATEST}: run `runner db migrate`" in warning
    assert counter_totals(real_redis)['archive_writes_total{result="refused"}'] == 1
    assert status.code == 1
    assert (status.json()["version"], status.json()["writable"]) == (1, False)
    assert migrated.code == 0, migrated.stderr
    assert migrated.json() == {"before": 1, "version": LATEST, "applied": [m.version for m in MIGRATIONS[1:]]}
    assert archive_warnings(caught_up) == []
    signals = archived(postgres, pg_database, "signal")
    assert set(in_redis(real_redis, "signal")) | {"ETH/USD:2026-01-01T00:00"} == set(signals)
    decisions = postgres.sql("SELECT count(*) FROM archive.decisions", pg_database)
    assert decisions == [(len(signals),)]


def test_a_schema_newer_than_the_runner_is_refused_with_one_line(
    real_redis, redis_server, postgres, pg_database, tmp_path
):
    url = postgres.url(pg_database)
    migrate(url)
    postgres.sql(
        "INSERT INTO archive.schema_migrations (version, name) VALUES (99, 'the future')", pg_database
    )
    env = pg_env(redis_server, tmp_path, url)

    res = cycle(env)
    migrated = run_cli(["db", "migrate"], env)
    status = run_cli(["db", "status", "--json"], env)

    assert res.code == 0, res.stderr
    (warning,) = archive_warnings(res)
    assert f"version 99, newer than this runner knows ({LATEST}): upgrade the runner" in warning
    assert archived(postgres, pg_database, "signal") == {}
    line = assert_one_error_line(migrated, 3)
    assert "newer than this runner knows" in line
    assert status.code == 1
    assert status.json()["version"] == 99


# --- roles, reads and secrets ----------------------------------------------------------------


def readme_grants() -> list[str]:
    """The statements the README gives the runner's role, as written there."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("-- the runner's grants\n", 1)[1].split("```", 1)[0]
    return [s.strip() for s in block.split(";") if s.strip() and not s.strip().startswith("--")]


def test_the_readme_grants_let_the_runner_write_and_read_and_nothing_more(
    real_redis, redis_server, postgres, pg_database, tmp_path
):
    from tests.conftest import PG_ADMIN

    password = "writer-pw-41c"
    postgres.sql(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'runner_writer') THEN "
        f"CREATE ROLE runner_writer LOGIN PASSWORD '{password}'; END IF; END $$"
    )
    migrate(postgres.url(pg_database))
    writer = postgres.url(pg_database, user="runner_writer", password=password)
    env = pg_env(redis_server, tmp_path, writer)
    lacking = run_cli(["db", "status", "--json"], env)
    for statement in readme_grants():
        postgres.sql(
            statement.replace("DATABASE archive", f'DATABASE "{pg_database}"').replace(
                "archive_owner", PG_ADMIN
            ),
            pg_database,
        )

    status = run_cli(["db", "status", "--json"], env)
    res = cycle(env)
    history = run_cli(["history", "--json"], env)
    migrate_as_writer = run_cli(["db", "migrate"], env)

    assert lacking.code == 1
    assert any("cannot INSERT" in p or "no USAGE" in p for p in lacking.json()["problems"])
    assert status.code == 0, status.json()
    assert status.json()["role"] == "runner_writer"
    assert archive_warnings(res) == []
    assert_archive_holds_what_redis_held(postgres, pg_database, real_redis)
    assert history.code == 0, history.stderr
    assert history.json()["count"] > 0
    assert_one_error_line(migrate_as_writer, 3)


def test_history_reads_the_archive_and_says_so_when_it_reads_redis(
    real_redis, redis_server, postgres, pg_database, tmp_path
):
    migrate(postgres.url(pg_database))
    env = pg_env(redis_server, tmp_path, postgres.url(pg_database))
    at = datetime.now(UTC)
    for minute in (-2, -1):
        assert cycle(env, scheduled_now(minute, at)).code == 0
    real_redis.delete("signals:raw")  # Redis forgot them; the archive did not
    no_archive = {k: v for k, v in env.items() if k != "POSTGRES_URL"}

    eth = run_cli(["history", "--symbol", "ETH/USD", "--stage", "signal", "--since", "1h", "--json"], env)
    every = run_cli(["history", "--json", "--limit", "3"], env)
    from_redis = run_cli(["history", "--stage", "score", "--json"], no_archive)
    bad = run_cli(["history", "--stage", "nonsense"], env)

    assert eth.code == 0, eth.stderr
    doc = eth.json()
    assert doc["source"] == "postgres"
    assert [d["symbol"] for d in doc["documents"]] == ["ETH/USD", "ETH/USD"]
    assert {d["stage"] for d in doc["documents"]} == {"signal"}
    assert doc["documents"][0]["minute"] > doc["documents"][1]["minute"]
    assert doc["documents"][0]["doc"]["action"] in ("BUY", "SELL", "HOLD")
    assert every.json()["count"] == 3
    redis_doc = from_redis.json()
    assert redis_doc["source"] == "redis"
    assert "only what they still hold" in redis_doc["note"]
    assert {d["id"] for d in redis_doc["documents"]} == set(in_redis(real_redis, "score"))
    assert_one_error_line(bad, 2)


def test_the_scorecard_from_the_archive_matches_the_one_redis_keeps(
    real_redis, redis_server, postgres, pg_database, tmp_path
):
    migrate(postgres.url(pg_database))
    env = pg_env(
        redis_server, tmp_path, postgres.url(pg_database), RUNNER_OUTCOMES__HORIZONS_MINUTES="[1, 2]"
    )
    env.pop("RUNNER_ANALYZER__BACKEND")  # the built-in analyzer: BUYs and SELLs, confidences that vary
    env.pop("RUNNER_ANALYZER__PLUGIN")
    at = datetime.now(UTC)
    for minute in (-4, -3, -2, -1, 0):
        assert cycle(env, scheduled_now(minute, at), symbols="ETH/USD,BTC/USD,SOL/USD").code == 0
    no_archive = {k: v for k, v in env.items() if k != "POSTGRES_URL"}

    from_pg = run_cli(["scorecard", "--json", "--since", "30d"], env).json()
    from_redis = run_cli(["scorecard", "--json", "--since", "30d"], no_archive).json()
    # An outcome belongs to the UTC day its cycle scored it: in Redis the day the cycle started,
    # in the archive the day Redis took the outcome. Only a cycle straddling midnight tells them
    # apart, and then only in signals per day.
    one_day = at.date() == datetime.now(UTC).date()

    assert (from_pg["source"], from_redis["source"]) == ("postgres", "redis")
    assert from_pg["rows"], "outcomes were scored"
    for part in ("rows", "summary", "calibration"):
        assert len(from_pg[part]) == len(from_redis[part]), part
        for mine, theirs in zip(from_pg[part], from_redis[part], strict=True):
            assert mine.keys() == theirs.keys()
            for k, v in theirs.items():
                if k == "signals_per_day" and not one_day:
                    continue
                assert mine[k] == (pytest.approx(v) if isinstance(v, float) else v), (part, k)


def test_no_password_is_ever_printed(real_redis, redis_server, postgres, pg_database, tmp_path):
    migrate(postgres.url(pg_database))
    wrong = "wrong-pw-7d2e"
    good_env = pg_env(redis_server, tmp_path, postgres.url(pg_database))
    bad_env = pg_env(redis_server, tmp_path, postgres.url(pg_database, password=wrong))
    query_env = pg_env(
        redis_server,
        tmp_path,
        f"postgresql://127.0.0.1:{postgres.port}/{pg_database}?password={wrong}&user=x",
    )

    outputs = [
        run_cli(["config"], good_env),
        cycle(good_env),
        cycle(bad_env),
        run_cli(["db", "status"], bad_env),
        run_cli(["history"], bad_env),
        run_cli(["db", "migrate"], query_env),
        cycle(query_env),
    ]

    for res in outputs:
        for secret in (PG_ADMIN_PASSWORD, wrong):
            assert secret not in res.stdout
            assert secret not in res.stderr
    assert "***" in outputs[0].stdout
    assert outputs[2].code == 0, "a refused password costs the archive, not the cycle"
    (warning,) = archive_warnings(outputs[2])
    assert "password authentication failed" in warning
    for res in outputs[3:6]:
        assert_one_error_line(res, 3)
