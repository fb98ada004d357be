"""Scenarios 24-27: a Redis that is full, one that evicts, an ACL user without the rights the runner
needs, and Redis over TLS. Each runs the real CLI against a redis-server of its own."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.integration.helpers import log_lines, scheduled_now, wait_until
from tests.reliability.redis_limits import (
    admin,
    certificates,
    consistency,
    dataset,
    error_lines,
    fill,
    held,
    make_ca,
    redis_with,
    tls_client,
    tls_redis,
)
from tests.reliability.support import bad_lines, run, runner_env, spawn
from tests.support.terminal import on_a_terminal

SYMBOLS = ["--symbols", "ETH/USD,BTC/USD,SOL/USD", "--json"]
PASSWORD = "acl-pa55-7d1e9c"


def env_of(
    url: str, tmp_path: Path, minute: int = 0, at: datetime | None = None, **extra: str
) -> dict[str, str]:
    return runner_env(
        url,
        tmp_path,
        RUNNER_SCHEDULED_AT=scheduled_now(minute, at=at),
        RUNNER_REDIS__SOCKET_TIMEOUT_SECONDS="1",
        **extra,
    )


def one_error(proc: Any) -> str:
    """Exit 3, a JSON document on stdout, exactly one `runner: error:` line, no traceback."""
    assert proc.code == 3, (proc.code, proc.stdout[-2000:], proc.stderr[-2000:])
    assert not bad_lines(proc.stderr), proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["exit_code"] == 3
    (line,) = error_lines(proc.stderr)
    return line


def completes(proc: Any) -> dict[str, Any]:
    assert proc.code == 0, (proc.code, proc.stdout[-2000:], proc.stderr[-2000:])
    doc: dict[str, Any] = json.loads(proc.stdout)
    assert doc["status"] == "completed", doc
    assert all(r["status"] == "ok" for r in doc["results"]), doc["results"]
    return doc


# --- 24. Redis full (maxmemory with noeviction) ---------------------------------------------------


@pytest.mark.scenario("24")
def test_redis_full_before_the_cycle(measure, tmp_path: Path):
    """Redis (`maxmemory 8mb`, `noeviction`) is filled with ballast until it refuses a write, then a
    cycle runs: it exits 3 with one `runner: error:` line saying Redis is full and what to do, a
    JSON document on stdout, no traceback, and writes nothing at all (the whole dataset is as it
    was). Once maxmemory is raised, the next cycle runs normally."""
    at = datetime.now(UTC)
    with redis_with(tmp_path / "redis", "--maxmemory", "8mb", "--maxmemory-policy", "noeviction") as server:
        client = admin(server)
        completes(run(["cycle", *SYMBOLS], env_of(server.url, tmp_path, -2, at), tmp_path / "runs"))
        ballast = fill(client)
        before = dataset(client)
        full = run(["cycle", *SYMBOLS], env_of(server.url, tmp_path, -1, at), tmp_path / "runs")
        after = dataset(client)
        client.config_set("maxmemory", "64mb")
        again = run(["cycle", *SYMBOLS], env_of(server.url, tmp_path, 0, at), tmp_path / "runs")
        line = one_error(full)
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        measure.figures(ballast_keys=ballast, exit_code=full.code, keys_changed=len(changed), line=line)
        assert "Redis is full" in line
        assert "raise maxmemory" in line
        assert changed == []
        completes(again)
        assert held(client) == {"locks": [], "leases": [], "heartbeats": []}


@pytest.mark.scenario("24")
@pytest.mark.parametrize("when", ["during_the_signals", "after_the_signals"])
def test_redis_full_mid_cycle(when, measure, tmp_path: Path):
    """Redis fills up while a cycle holds its locks: during the analysis (nothing of the cycle is
    published yet), or after its signals are published and before their scores. The cycle ends at
    once: exit 3, one `runner: error:` line saying Redis is full, no traceback. Nothing is
    half-written: every document in a stream has its idempotency marker (and every signal its
    latest entry), no marker lacks its document, and the run released every lock, its lease and
    its heartbeat entry (deleting needs no memory). Once maxmemory is raised, the very next cycle
    completes, without waiting for any TTL."""
    at = datetime.now(UTC)
    gate, started = tmp_path / "gate", tmp_path / "started.log"
    gated = {"SCRIPTED_STAGE_GATE" if when == "after_the_signals" else "SCRIPTED_GATE": str(gate)}
    log = {"SCRIPTED_STAGE_LOG" if when == "after_the_signals" else "SCRIPTED_LOG": str(started)}
    extra: dict[str, str] = {**gated, **log, "RUNNER_TIMEOUTS__TOTAL_TIMEOUT_SECONDS": "60"}
    extra.update(
        RUNNER_TIMEOUTS__SYMBOL_TIMEOUT_SECONDS="50", RUNNER_TIMEOUTS__SYMBOL_TIMEOUT_MAX_SECONDS="50"
    )
    if when == "after_the_signals":
        extra.update(
            RUNNER_PIPELINE__SCORE__BACKEND="plugin",
            RUNNER_PIPELINE__SCORE__PLUGIN="tests.support.scripted_stage:make",
        )
    with redis_with(tmp_path / "redis", "--maxmemory", "16mb", "--maxmemory-policy", "noeviction") as server:
        client = admin(server)
        proc = spawn(["cycle", *SYMBOLS], env_of(server.url, tmp_path, -1, at, **extra), tmp_path / "runs")
        try:
            wait_until(lambda: started.exists() and len(started.read_text().split()) == 3, timeout=60)
            signals_before = client.xlen("signals:raw")
            ballast = fill(client)
        finally:
            gate.touch()
        proc.wait(90)
        left = held(client)
        check = consistency(client)
        scores = client.xlen("signals:scored")
        client.config_set("maxmemory", "256mb")
        again = run(["cycle", *SYMBOLS], env_of(server.url, tmp_path, 0, at), tmp_path / "runs")
        line = one_error(proc)
        doc = json.loads(proc.stdout)
        measure.figures(
            ballast_keys=ballast,
            signals_published_before_full=signals_before,
            scores_published=scores,
            documents_in_streams=check.entries,
            half_written=len(check.without_marker)
            + len(check.markers_without_entry)
            + len(check.latest_missing),
            left_held=sum(len(v) for v in left.values()),
            results=sorted({r["status"] for r in doc["results"]}),
            line=line,
        )
        assert "Redis is full" in line
        assert check.ok, check
        assert left == {"locks": [], "leases": [], "heartbeats": []}
        assert signals_before == (3 if when == "after_the_signals" else 0)
        assert scores == 0
        assert not any(r["status"] == "ok" for r in doc["results"]), "nothing went through every stage"
        done = completes(again)
        assert len(done["signals"]) == 3


# --- 25. An evicting policy -----------------------------------------------------------------------


POLICIES = ["allkeys-lru", "volatile-lru", "allkeys-random", "volatile-ttl", "allkeys-lfu"]


@pytest.mark.scenario("25")
@pytest.mark.parametrize("policy", POLICIES)
def test_an_evicting_policy_is_warned_of(policy, measure, tmp_path: Path):
    """Redis with `maxmemory 64mb` and a policy that evicts (every policy but `noeviction` may
    evict the runner's locks, leases and markers: they all carry a TTL). The cycle still runs, and
    its start-up log has one warning naming the policy and saying what to set; `runner status
    --json` has `memory.evicts` true with the warning, `--check` says degraded (exit 1) naming it,
    and the status screen on a terminal shows it. The policy is read with the cycle's first script
    (`CONFIG GET` in the same round trip: one CONFIG call per cycle, no INFO)."""
    with redis_with(tmp_path / "redis", "--maxmemory", "64mb", "--maxmemory-policy", policy) as server:
        env = env_of(server.url, tmp_path)
        client = admin(server)
        client.config_resetstat()
        proc = run(["cycle", *SYMBOLS], env, tmp_path / "runs")
        stats = client.info("commandstats")
        status = run(["status", "--json"], env, tmp_path / "runs")
        check = run(["status", "--check", "--json"], env, tmp_path / "runs")
        code, screen = on_a_terminal(["status"], env)
        completes(proc)
        warnings = [r["msg"] for r in log_lines(proc.stderr) if "may evict" in r["msg"]]
        memory = status.json()["memory"]
        measure.figures(
            cycle_warnings=len(warnings),
            config_calls=stats.get("cmdstat_config|get", {}).get("calls", 0),
            info_calls=stats.get("cmdstat_info", {}).get("calls", 0),
            status_evicts=memory["evicts"],
            check_exit=check.code,
        )
        assert len(warnings) == 1
        assert f"maxmemory-policy {policy}" in warnings[0]
        assert "set maxmemory-policy noeviction" in warnings[0]
        assert json.loads(proc.stdout)["warnings"] == warnings
        assert memory["maxmemory_policy"] == policy
        assert memory["evicts"] is True
        assert memory["warning"] == warnings[0]
        assert check.code == 1
        assert any(policy in p for p in check.json()["health"]["problems"])
        assert code == 0, screen
        assert "Redis may evict keys when full" in " ".join(screen.split())
        assert stats.get("cmdstat_config|get", {}).get("calls") == 1
        assert "cmdstat_info" not in stats


@pytest.mark.scenario("25")
@pytest.mark.parametrize(
    ("case", "options"),
    [
        ("noeviction", ["--maxmemory", "64mb", "--maxmemory-policy", "noeviction"]),
        ("no limit", ["--maxmemory", "0", "--maxmemory-policy", "allkeys-lru"]),
    ],
)
def test_a_policy_that_never_evicts_is_not_warned_of(case, options, measure, tmp_path: Path):
    """`noeviction`, or an evicting policy without a memory limit (maxmemory 0: nothing is ever
    evicted): no warning in the log, `memory.evicts` false, status healthy."""
    with redis_with(tmp_path / "redis", *options) as server:
        env = env_of(server.url, tmp_path)
        proc = run(["cycle", *SYMBOLS], env, tmp_path / "runs")
        check = run(["status", "--check", "--json"], env, tmp_path / "runs")
        completes(proc)
        memory = check.json()["memory"]
        measure.figures(evicts=memory["evicts"], check_exit=check.code)
        assert not [r for r in log_lines(proc.stderr) if "may evict" in r["msg"]]
        assert memory["evicts"] is False
        assert check.code == 0, check.json()["health"]


@pytest.mark.scenario("25")
def test_the_policy_is_read_again_by_every_run(measure, tmp_path: Path):
    """Nothing is cached across runs: the policy changed between two runs (CONFIG SET) is what
    the next run warns of, and a policy set back to noeviction is warned of no more."""
    at = datetime.now(UTC)
    with redis_with(tmp_path / "redis", "--maxmemory", "64mb") as server:
        client = admin(server)
        seen = []
        for i, policy in enumerate(["noeviction", "allkeys-lru", "volatile-random", "noeviction"]):
            client.config_set("maxmemory-policy", policy)
            proc = run(["cycle", *SYMBOLS], env_of(server.url, tmp_path, i - 5, at), tmp_path / "runs")
            completes(proc)
            seen.append(
                [
                    w.split("(")[1].split(",")[0]
                    for w in json.loads(proc.stdout)["warnings"]
                    if "may evict" in w
                ]
            )
        measure.figures(warned_of=seen)
        assert seen == [[], ["maxmemory-policy allkeys-lru"], ["maxmemory-policy volatile-random"], []]


@pytest.mark.scenario("25")
@pytest.mark.parametrize(("refused", "read_from"), [("-config", "info"), ("-config -info", None)])
def test_a_server_refusing_config_is_asked_info_memory(refused, read_from, measure, tmp_path: Path):
    """A user that may not run CONFIG (managed Redis refuses it; here an ACL): the policy comes
    from `INFO memory` instead and is still warned of. A user that may run neither: the policy is
    unknown, which is no error and no warning; the cycle runs either way."""
    with redis_with(tmp_path / "redis", "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru") as server:
        admin(server).acl_setuser(
            "runner", enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], channels=["*"],
            commands=["+@all", *refused.split()],
        )  # fmt: skip
        url = f"redis://runner:{PASSWORD}@127.0.0.1:{server.port}/0"
        env = env_of(url, tmp_path)
        proc = run(["cycle", *SYMBOLS], env, tmp_path / "runs")
        status = run(["status", "--json"], env, tmp_path / "runs")
        completes(proc)
        warned = [w for w in json.loads(proc.stdout)["warnings"] if "may evict" in w]
        memory = status.json()["memory"]
        measure.figures(read_from=memory["read_from"], warned=len(warned))
        assert memory["read_from"] == read_from
        assert len(warned) == (1 if read_from else 0)
        assert memory["evicts"] is bool(read_from)
        assert PASSWORD not in proc.stdout + proc.stderr + status.stdout + status.stderr


# --- 26. An ACL user without what the runner needs ------------------------------------------------


ACL_CASES = {
    "no EVALSHA/EVAL": (["+@all", "-evalsha", "-eval"], ["*"], "EVALSHA"),
    "no XADD": (["+@all", "-xadd"], ["*"], "XADD"),
    "no channels": (["+@all"], [], "PUBLISH"),
    "no HSET": (["+@all", "-hset"], ["*"], "HSET"),
}


@pytest.mark.scenario("26")
@pytest.mark.parametrize("case", list(ACL_CASES))
def test_an_acl_user_without_a_command_the_runner_needs(case, measure, tmp_path: Path):
    """The cycle runs as an ACL user lacking a command (or the channels) the runner needs: exit
    3, exactly one `runner: error:` line naming the missing command, no traceback, the password
    never printed. Nothing is half-written (every document in a stream has its marker and no
    marker lacks its document; the publish script checks the user's rights before it writes) and
    nothing is left held."""
    commands, channels, named = ACL_CASES[case]
    with redis_with(tmp_path / "redis") as server:
        admin(server).acl_setuser(
            "runner", enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], channels=channels,
            commands=commands, reset_channels=not channels,
        )  # fmt: skip
        url = f"redis://runner:{PASSWORD}@127.0.0.1:{server.port}/0"
        proc = run(["cycle", *SYMBOLS], env_of(url, tmp_path), tmp_path / "runs")
        client = admin(server)
        check = consistency(client)
        left = held(client)
        line = one_error(proc)
        measure.figures(exit_code=proc.code, documents_in_streams=check.entries, line=line)
        assert f"may not run {named}" in line
        assert PASSWORD not in proc.stdout + proc.stderr
        assert check.ok, check
        assert left == {"locks": [], "leases": [], "heartbeats": []}


def readme_acl() -> list[str]:
    """The `ACL SETUSER` line the README gives, as its words."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    (line,) = [x.strip() for x in text.splitlines() if x.strip().startswith("ACL SETUSER runner")]
    return line.replace("PASSWORD", PASSWORD).split()


@pytest.mark.scenario("26")
def test_the_acl_user_the_readme_gives_runs(measure, tmp_path: Path):
    """The README's user (its keys and channels only, `+@all -@dangerous`: no CONFIG, INFO, ROLE,
    DEBUG, KEYS ..., what managed Redis users often get) is enough: the cycle completes, `runner
    status` answers (the eviction policy unknown) and the dashboard's server serves its snapshot."""
    with redis_with(tmp_path / "redis") as server:
        admin(server).execute_command(*readme_acl())
        env = env_of(f"redis://runner:{PASSWORD}@127.0.0.1:{server.port}/0", tmp_path)
        proc = run(["cycle", *SYMBOLS], env, tmp_path / "runs")
        status = run(["status", "--json"], env, tmp_path / "runs")
        history = run(["history", "--json", "--limit", "3"], env, tmp_path / "runs")
        completes(proc)
        measure.figures(
            acl=" ".join(readme_acl()).replace(PASSWORD, "***"),
            status_exit=status.code,
            history_exit=history.code,
            policy=status.json()["memory"]["maxmemory_policy"],
        )
        assert status.code == 0, status.stderr
        assert status.json()["memory"]["maxmemory_policy"] is None
        assert history.code == 0, history.stderr
        assert PASSWORD not in proc.stdout + proc.stderr + status.stdout + status.stderr


@pytest.mark.scenario("26")
def test_a_wrong_password_is_one_line_without_it(measure, tmp_path: Path):
    """A wrong password: exit 3, one line, and neither the wrong nor the right password shown."""
    with redis_with(tmp_path / "redis") as server:
        admin(server).acl_setuser(
            "runner", enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], commands=["+@all"]
        )
        wrong = "not-the-" + PASSWORD
        proc = run(
            ["cycle", *SYMBOLS],
            env_of(f"redis://runner:{wrong}@127.0.0.1:{server.port}/0", tmp_path),
            tmp_path / "runs",
        )
        line = one_error(proc)
        measure.figures(line=line)
        assert "invalid username-password pair" in line
        assert PASSWORD not in proc.stdout + proc.stderr


# --- 27. Redis over TLS ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory):
    """A test CA with a server certificate for 127.0.0.1 and a client certificate, from openssl."""
    return certificates(tmp_path_factory.mktemp("tls"))


@pytest.mark.scenario("27")
@pytest.mark.parametrize("clients", ["optional", "yes"])
def test_rediss_with_the_test_ca(clients, certs, measure, tmp_path: Path):
    """`rediss://127.0.0.1:PORT/0?ssl_ca_certs=<the test CA>` to a redis-server that speaks only
    TLS: the cycle completes and `runner status` answers; with `tls-auth-clients yes` the client
    certificate goes in `ssl_certfile` and `ssl_keyfile`."""
    with tls_redis(tmp_path, certs, clients) as server:
        query = {"ssl_ca_certs": str(certs.ca)}
        if clients == "yes":
            query.update(ssl_certfile=str(certs.client_cert), ssl_keyfile=str(certs.client_key))
        env = env_of(server.url(**query), tmp_path)
        proc = run(["cycle", *SYMBOLS], env, tmp_path / "runs")
        status = run(["status", "--json"], env, tmp_path / "runs")
        done = completes(proc)
        measure.figures(signals=len(done["signals"]), status_exit=status.code)
        assert status.code == 0, status.stderr
        assert status.json()["last_cycle"]["cycle_id"] == done["cycle_id"]
        with tls_client(server, certs) as client:
            assert client.xlen("signals:raw") == 3


def _another_ca(tmp_path: Path) -> str:
    return str(make_ca(tmp_path / "other", "other-ca")[0])


def _localhost_only(tmp_path: Path, certs: Any) -> str:
    return str(certs.ca)


TLS_FAILURES = {
    "a wrong CA": (lambda tmp, certs: {"ssl_ca_certs": _another_ca(tmp)}, 3, "certificate verify failed"),
    "no CA (the system's)": (lambda tmp, certs: {}, 3, "certificate verify failed"),
    "no client certificate": (lambda tmp, certs: {"ssl_ca_certs": str(certs.ca)}, 3, "Redis unavailable"),
    "a CA file that is not there": (
        lambda tmp, certs: {"ssl_ca_certs": str(tmp / "nope.pem")},
        2,
        "ssl_ca_certs",
    ),
    "an unknown option": (
        lambda tmp, certs: {"ssl_ca_cert": str(certs.ca)},
        2,
        "unknown option 'ssl_ca_cert'",
    ),
    "a bad cert_reqs": (lambda tmp, certs: {"ssl_cert_reqs": "sometimes"}, 2, "ssl_cert_reqs must be one of"),
}


@pytest.mark.scenario("27")
@pytest.mark.parametrize("case", list(TLS_FAILURES))
def test_tls_that_cannot_work_is_one_line(case, certs, measure, tmp_path: Path):
    """A TLS URL that cannot work: a CA that did not sign the server's certificate (or none but
    the system's), a server that wants a client certificate and gets none: exit 3 (Redis
    unavailable) with one line; a CA file that is not there, an unknown or bad option: exit 2
    (a setting) with one line naming it. No traceback."""
    make, code, says = TLS_FAILURES[case]
    with tls_redis(tmp_path, certs, "yes" if case == "no client certificate" else "optional") as server:
        proc = run(
            ["cycle", *SYMBOLS], env_of(server.url(**make(tmp_path, certs)), tmp_path), tmp_path / "runs"
        )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    measure.figures(
        exit_code=proc.code, line=error_lines(proc.stderr)[0] if error_lines(proc.stderr) else lines[-1:]
    )
    assert proc.code == code, (proc.stdout, proc.stderr)
    assert not bad_lines(proc.stderr), proc.stderr
    (line,) = error_lines(proc.stderr)
    assert says in line


@pytest.mark.scenario("27")
def test_a_certificate_for_another_name_is_refused(certs, measure, tmp_path: Path):
    """The server's certificate names only 127.0.0.1; the URL says `localhost`: hostname checking
    (on by default) refuses it, exit 3 with one line; `ssl_check_hostname=false` connects."""
    with tls_redis(tmp_path, certs) as server:
        checked = run(
            ["cycle", *SYMBOLS],
            env_of(server.url("localhost", ssl_ca_certs=str(certs.ca)), tmp_path),
            tmp_path / "runs",
        )
        unchecked = run(
            ["cycle", *SYMBOLS],
            env_of(
                server.url("localhost", ssl_ca_certs=str(certs.ca), ssl_check_hostname="false"), tmp_path, -1
            ),
            tmp_path / "runs",
        )
    line = one_error(checked)
    measure.figures(line=line, unchecked_exit=unchecked.code)
    assert "certificate" in line.lower() or "hostname" in line.lower()
    completes(unchecked)
