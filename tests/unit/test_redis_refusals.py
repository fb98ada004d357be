"""What a Redis that refuses says, read into one line: out of memory, an ACL without a command, an
eviction policy that may drop the runner's keys; the release that needs no memory; the query of a
one-server URL."""

from __future__ import annotations

import re
from typing import Any

import pytest
from redis.exceptions import NoPermissionError, OutOfMemoryError, ResponseError

from runner.errors import RedisRefused, RedisUnavailable, TopologyChanged, ends_cycle
from runner.redis_url import parse
from runner.store import memory, scripts
from runner.store.connection import Script, redis_errors, refusal
from runner.store.keys import Keys
from runner.store.locks import Owner
from runner.store.state import StateStore

KEYS = Keys()
ME = Owner("pod-a", "cycle-a", pid=111)


# Refusals ---------------------------------------------------------------------------------------


def test_out_of_memory_is_a_refusal_that_says_what_to_do() -> None:
    exc = OutOfMemoryError(
        "command not allowed when used memory > 'maxmemory'. script: ab12, on @user_script:87."
    )

    refused = refusal(exc, "publishing signals")

    assert isinstance(refused, RedisRefused)
    assert str(refused) == (
        "Redis is full and refused publishing signals: used memory is above maxmemory and its policy "
        "evicts nothing (raise maxmemory or free memory)"
    )


@pytest.mark.parametrize(
    ("exc", "named"),
    [
        (
            NoPermissionError("this user has no permissions to run the 'evalsha' command"),
            "may not run EVALSHA",
        ),
        (NoPermissionError("this user may not run XADD on signals:raw"), "may not run XADD on signals:raw"),
        (
            ResponseError(
                "The user executing the script can't run this command or subcommand "
                "script: ab, on @user_script:3."
            ),
            "lacks a permission",
        ),
        (
            ResponseError(
                "ACL failure in script: No permissions to run the 'hset' command "
                "script: 8a7c0d, on @user_script:1."
            ),
            "HSET",
        ),
    ],
)
def test_a_missing_permission_is_a_refusal_naming_it(exc: ResponseError, named: str) -> None:
    refused = refusal(exc, "the cycle's first step")

    assert isinstance(refused, RedisRefused)
    assert named in str(refused)
    assert "\n" not in str(refused)
    assert "script: ab" not in str(refused)


def test_a_script_error_names_the_command_on_its_line() -> None:
    script = Script(object(), "\nlocal a = 1\n  redis.call('XADD', KEYS[1], '*', 'f', 'v')\n")  # type: ignore[arg-type]
    exc = ResponseError(
        "The user executing the script can't run this command or subcommand script: ab, on @user_script:3."
    )

    script.locate(exc)
    refused = refusal(exc, "publishing signals")

    assert refused is not None
    assert "the ACL user may not run XADD (" in str(refused)


def test_other_error_replies_are_not_refusals() -> None:
    assert (
        refusal(ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), "x")
        is None
    )
    assert refusal(ResponseError("READONLY You can't write against a read only replica."), "x") is None


async def test_redis_errors_raises_the_refusal_and_it_ends_the_cycle() -> None:
    with pytest.raises(RedisRefused) as caught:
        async with redis_errors("recording the cycle"):
            raise OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")

    assert ends_cycle(caught.value)
    assert ends_cycle(TopologyChanged("gone"))
    assert not ends_cycle(RedisUnavailable("slow"))


# The eviction policy ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "policy", "evicts"),
    [
        (["maxmemory", "0", "maxmemory-policy", "allkeys-lru"], "allkeys-lru", False),  # no limit
        (["maxmemory", "1048576", "maxmemory-policy", "allkeys-lru"], "allkeys-lru", True),
        ({"maxmemory": "1048576", "maxmemory-policy": "volatile-ttl"}, "volatile-ttl", True),
        ({"maxmemory": "1048576", "maxmemory-policy": "noeviction"}, "noeviction", False),
    ],
)
def test_the_policy_from_config_get(reply: Any, policy: str, evicts: bool) -> None:
    got = memory.from_config(reply)

    assert got is not None
    assert (got.policy, got.evicts, got.source) == (policy, evicts, "config")
    assert (got.warning() is not None) is evicts
    if evicts:
        assert f"maxmemory-policy {policy}" in str(got.warning())
        assert "set maxmemory-policy noeviction" in str(got.warning())


def test_the_policy_from_info_memory_when_config_is_refused() -> None:
    text = "# Memory\r\nused_memory:1000\r\nmaxmemory:2097152\r\nmaxmemory_policy:allkeys-random\r\n"

    assert memory.from_config(NoPermissionError("no permissions to run the 'config|get' command")) is None
    got = memory.from_info(text)

    assert got == memory.MemoryPolicy("allkeys-random", 2097152, "info")
    assert got.evicts
    assert memory.from_info(ResponseError("unknown command 'INFO'")) is None
    assert memory.from_info("# Memory\r\nused_memory:1000\r\n") is None


def test_an_unknown_policy_is_no_warning() -> None:
    unknown = memory.MemoryPolicy()

    assert not unknown.evicts
    assert unknown.warning() is None
    assert unknown.document() == {
        "maxmemory_policy": None,
        "maxmemory": None,
        "read_from": None,
        "evicts": False,
        "warning": None,
    }


async def test_the_first_step_reads_the_policy_in_its_round_trip(any_redis: Any) -> None:
    """fakeredis knows neither CONFIG nor INFO: the policy is unknown and the step still runs."""
    script = Script(any_redis, "return 'ran'")

    first, result = await script.after(memory.CONFIG_COMMAND, [], [], slot_key="k", reply_timeout=2)

    assert result == "ran"
    policy = memory.from_config(first)
    assert policy is None or policy.policy == "noeviction"


# Releasing without memory -----------------------------------------------------------------------


async def test_release_frees_only_what_the_run_holds(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)
    await any_redis.set(KEYS.lock("ETH/USD"), "mine", ex=90)
    await any_redis.set(KEYS.lock("BTC/USD"), "someone else's", ex=90)
    await any_redis.set(KEYS.lease("0-1"), "my lease", ex=90)
    await any_redis.hset(KEYS.heartbeat(ME.instance_id), mapping={ME.cycle_id: "1", "other-cycle": "2"})

    released = await store.release(
        ME, [KEYS.lock("ETH/USD"), KEYS.lock("BTC/USD")], ["mine", "not what it holds"], "my lease"
    )

    assert released == 3
    assert not await any_redis.exists(KEYS.lock("ETH/USD"))
    assert await any_redis.get(KEYS.lock("BTC/USD")) == "someone else's"
    assert not await any_redis.exists(KEYS.lease("0-1"))
    assert await any_redis.hgetall(KEYS.heartbeat(ME.instance_id)) == {"other-cycle": "2"}


def test_release_writes_nothing_that_needs_memory() -> None:
    """Redis runs a script above maxmemory until its first command that may grow memory: the
    release has none (only reads and deletes)."""
    body = scripts.RELEASE.removeprefix(scripts.PRELUDE)
    calls = {c.split("'")[1] for c in body.split("redis.")[1:] if c.startswith(("call", "pcall"))}

    assert calls <= {"GET", "DEL", "HDEL", "TYPE"}


# One-server URLs ----------------------------------------------------------------------------------


def test_a_tls_url_takes_its_options_and_db() -> None:
    got = parse("rediss://cache:6380/0?ssl_ca_certs=/ca.pem&ssl_check_hostname=false&db=2")

    assert got.tls
    assert got.tls_options == {"ssl_ca_certs": "/ca.pem", "ssl_check_hostname": False}


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("rediss://cache/0?ssl_ca_cert=/ca.pem", "unknown option 'ssl_ca_cert'"),
        ("redis://cache/0?ssl_ca_certs=/ca.pem", "not a TLS URL"),
        ("redis://cache/0?socket_timeout=30", "unknown option 'socket_timeout'"),
        ("rediss://cache/0?ssl_check_hostname=maybe", "ssl_check_hostname must be true or false"),
        ("rediss://cache/0?ssl_cert_reqs=bogus", "ssl_cert_reqs must be one of"),
        ("unix:///run/redis.sock?db=x", "bad db"),
    ],
)
def test_a_one_server_url_with_a_bad_option_is_one_line(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        parse(url)
