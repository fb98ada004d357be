"""REDIS_URL for one server, Sentinel and Cluster: what each form names, the one-line errors
(never a password), the key prefix a cluster needs, and what `runner config` shows."""

from __future__ import annotations

from typing import Any

import pytest
from redis.crc import key_slot

from runner.config import load_settings, public_view
from runner.errors import ConfigError
from runner.redis_url import Target, Topology, cluster_prefix, parse, redact_url
from runner.store.keys import Keys

SECRET = "s3cr3t-Pa55"


def settings(url: str, **redis: Any) -> Any:
    return load_settings(None, {"redis": {"url": url, **redis}}, environ={})


def config_error(url: str) -> str:
    with pytest.raises(ConfigError) as info:
        settings(url)
    message = str(info.value)
    assert "\n" not in message
    return message


# What each form names ------------------------------------------------------------------------


def test_a_sentinel_url_names_its_sentinels_master_and_db() -> None:
    got = parse("redis+sentinel://app:pw@10.0.0.1:26379,10.0.0.2:26380,sentinel-3/mymaster/2")

    assert got.topology is Topology.SENTINEL
    assert got.nodes == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("sentinel-3", 26379))
    assert got.master_name == "mymaster"
    assert got.db == 2
    assert (got.username, got.password) == ("app", "pw")
    assert got.sentinel_password is None
    assert not got.tls


def test_sentinel_credentials_are_their_own() -> None:
    got = parse(
        "redis+sentinel://:data-pw@s1:26379/mymaster?sentinel_password=sent%40pw&sentinel_username=watcher"
    )

    assert got.password == "data-pw"
    assert got.username is None
    assert (got.sentinel_username, got.sentinel_password) == ("watcher", "sent@pw")
    assert got.db == 0
    assert sorted(got.secrets()) == ["data-pw", "sent@pw"]


def test_the_tls_sentinel_form_takes_tls_options() -> None:
    got = parse("rediss+sentinel://s1,s2/mymaster?ssl_ca_certs=/etc/ca.pem&ssl_check_hostname=false")

    assert got.tls
    assert got.tls_options == {"ssl_ca_certs": "/etc/ca.pem", "ssl_check_hostname": False}
    assert got.nodes == (("s1", 26379), ("s2", 26379))


def test_a_cluster_url_names_its_seed_nodes() -> None:
    got = parse("redis+cluster://:pw@node-a:7000,node-b,[fd00::3]:7002")

    assert got.topology is Topology.CLUSTER
    assert got.nodes == (("node-a", 7000), ("node-b", 6379), ("fd00::3", 7002))
    assert got.password == "pw"
    assert got.master_name is None
    assert got.describe() == "cluster seeded by node-a:7000, node-b:6379, [fd00::3]:7002"


def test_the_tls_cluster_form() -> None:
    got = parse("rediss+cluster://node-a:7000/?ssl_cert_reqs=required")

    assert got.tls
    assert got.tls_options == {"ssl_cert_reqs": "required"}


@pytest.mark.parametrize(
    "url",
    ["redis://localhost", "rediss://:pw@cache:6380/1", "unix:///tmp/redis.sock", "redis://[::1]:6379"],
)
def test_one_server_keeps_its_url_for_redis_py(url: str) -> None:
    got = parse(url)

    assert got == Target(Topology.SINGLE, url, tls=url.startswith("rediss"))
    assert settings(url).redis.topology() is Topology.SINGLE


def test_a_repeated_node_is_listed_once() -> None:
    assert parse("redis+cluster://a:1,a:1,b:2").nodes == (("a", 1), ("b", 2))


# One-line errors that never show a password -------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://s1:26379", "names no master"),
        ("redis+sentinel://s1:26379/", "names no master"),
        ("redis+sentinel://s1:26379/mymaster/x", "bad db"),
        ("redis+sentinel://s1:26379/mymaster/1/2", "bad db"),
        ("redis+sentinel:///mymaster", "no host"),
        ("redis+sentinel://s1:0/mymaster", "bad port"),
        ("redis+sentinel://s1:65536/mymaster", "bad port"),
        ("redis+sentinel://s1:port/mymaster", "bad port"),
        ("redis+sentinel://s 1/mymaster", "bad host"),
        ("redis+sentinel://[::1/mymaster", "bad IPv6"),
        ("redis+sentinel://s1/mymaster?sentinel_pasword=x", "unknown option 'sentinel_pasword'"),
        ("redis+sentinel://s1/mymaster?ssl_ca_certs=/ca.pem", "not a TLS URL"),
        ("rediss+sentinel://s1/mymaster?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("rediss+sentinel://s1/mymaster?ssl_check_hostname=perhaps", "ssl_check_hostname"),
        ("redis+cluster://n1:7000/3", "only db 0"),
        ("redis+cluster://n1:7000?sentinel_password=x", "unknown option"),
        ("redis+cluster://", "no host"),
        ("redis://a:6379,b:6379/0", "several hosts"),
        ("redis+sentinal://s1/mymaster", "must be a redis://"),
    ],
)
def test_a_bad_url_is_one_line_saying_why(url: str, says: str) -> None:
    message = config_error(url)

    assert message.startswith("autonomous_runner.redis.url: ")
    assert says in message


@pytest.mark.parametrize(
    "url",
    [
        f"redis+sentinel://user:{SECRET}@s1:26379",
        f"redis+sentinel://s1:26379/m/x?sentinel_password={SECRET}",
        f"redis+sentinel://:{SECRET}@s1:26379/m?sentinel_password={SECRET}&bogus=1",
        f"redis+cluster://:{SECRET}@n1:70000",
        f"redis+cluster://:{SECRET}@n1:7000/5",
        f"rediss+cluster://:{SECRET}@n1:7000?ssl_cert_reqs=nope",
        f"redis://:{SECRET}@a:1,b:2/0",
        f"redis+sentinel://:pa/{SECRET}@s1:26379/m/x",
    ],
)
def test_no_error_ever_shows_a_password(url: str) -> None:
    assert SECRET not in config_error(url)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "redis+sentinel://app:pw@s1:26379,s2:26379/mymaster?sentinel_password=sp",
            "redis+sentinel://app:***@s1:26379,s2:26379/mymaster?sentinel_password=***",
        ),
        (
            "redis+sentinel://s1/m?ssl_ca_certs=/ca&sentinel_password=sp&sentinel_username=u",
            "redis+sentinel://s1/m?ssl_ca_certs=/ca&sentinel_password=***&sentinel_username=u",
        ),
        ("redis+cluster://:pw@a:1,b:2", "redis+cluster://:***@a:1,b:2"),
        ("redis://cache:6379/0?password=pw", "redis://cache:6379/0?password=***"),
    ],
)
def test_redact_masks_every_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_runner_config_shows_the_topology_without_secrets() -> None:
    s = settings(f"redis+sentinel://app:{SECRET}@s1:26379,s2:26379/mymaster/1?sentinel_password={SECRET}")

    view = public_view(s)["redis"]

    assert SECRET not in str(view)
    assert view["topology"] == "sentinel"
    assert view["nodes"] == ["s1:26379", "s2:26379"]
    assert view["master_name"] == "mymaster"


# The key prefix on a cluster --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "used"),
    [
        ("", "{runner}:"),
        ("{runner}:", "{runner}:"),
        ("prod:", "{prod}:"),
        ("prod", "{prod}:"),
        ("app{blue}:", "app{blue}:"),
        ("{}:", "{runner}:"),
        ("a{}b:", "{ab}:"),
    ],
)
def test_on_a_cluster_the_prefix_is_a_hash_tag(prefix: str, used: str) -> None:
    assert cluster_prefix(prefix) == used
    assert settings("redis+cluster://n1:7000", key_prefix=prefix).redis.effective_key_prefix() == used


def test_elsewhere_the_prefix_is_kept_as_it_is() -> None:
    for url in ("redis://cache:6379/0", "redis+sentinel://s1/m"):
        assert settings(url, key_prefix="prod:").redis.effective_key_prefix() == "prod:"
    assert settings("redis://cache:6379/0").redis.effective_key_prefix() == ""


def test_on_a_cluster_every_key_of_the_runner_shares_one_slot() -> None:
    """Every name ``Keys`` gives (and the heartbeat key the lock script derives from a lock's
    owner) hashes to the slot of the prefix's tag, whatever the instance id or symbol."""
    keys = Keys.for_settings(settings("redis+cluster://n1:7000"))
    names = [
        keys.stream,
        keys.channel,
        keys.latest,
        keys.scored_stream,
        keys.advised_latest,
        keys.reports_stream,
        keys.reports_latest,
        keys.published("ETH/USD:2026-11-23T14:05"),
        keys.published("report:2026-11-23T14:05:0-1"),
        keys.lock("ETH/USD"),
        keys.heartbeat_prefix + "pod-{weird}-7",
        keys.heartbeat("pod-a"),
        keys.lease("0-1"),
        keys.fencing,
        keys.kill_switch,
        keys.breaker("llm_service"),
        keys.backpressure("1-3"),
        keys.latency,
        keys.paused,
        keys.stats,
        keys.history,
        keys.last_cycle,
        keys.ratelimit_tat,
        keys.ratelimit_pause,
        keys.counters("0-1"),
        keys.gauges("0-1"),
    ]

    assert {key_slot(n.encode()) for n in names} == {key_slot(b"runner")}


# The clients the URLs build (nothing connects here) ----------------------------------------------------


def test_a_sentinel_url_builds_a_managed_master_with_no_hidden_retry() -> None:
    from redis.asyncio.sentinel import SentinelConnectionPool, SentinelManagedSSLConnection

    from runner.store.connection import _client_options, open_sentinel

    s = settings(
        "rediss+sentinel://app:data-pw@s1:26379,s2:26380/mymaster/3"
        "?sentinel_password=sent-pw&ssl_ca_certs=/etc/ca.pem",
        socket_timeout_seconds=1.5,
    )
    client, sentinel = open_sentinel(s.redis.target(), _client_options(s))

    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "mymaster"
    assert pool.connection_class is SentinelManagedSSLConnection
    kw = pool.connection_kwargs
    assert (kw["password"], kw["username"], kw["db"]) == ("data-pw", "app", 3)
    assert (kw["socket_timeout"], kw["socket_connect_timeout"]) == (1.5, 1.5)
    assert kw["retry"].get_retries() == 0
    assert kw["ssl_ca_certs"] == "/etc/ca.pem"
    watchers = [n.connection_pool.connection_kwargs for n in sentinel.sentinels]
    assert [(w["host"], w["port"]) for w in watchers] == [("s1", 26379), ("s2", 26380)]
    assert all(w["password"] == "sent-pw" and w["retry"].get_retries() == 0 for w in watchers)
    assert all(w["socket_timeout"] == 1.5 for w in watchers)
    assert all(n.connection_pool.connection_class.__name__ == "SSLConnection" for n in sentinel.sentinels)


def test_a_cluster_url_builds_a_cluster_client_with_no_hidden_retry() -> None:
    from redis.asyncio.connection import SSLConnection

    from runner.store.connection import _client_options, open_cluster

    s = settings("rediss+cluster://:pw@n1:7000,n2:7001?ssl_cert_reqs=none")
    client = open_cluster(s.redis.target(), _client_options(s))

    assert client.retry.get_retries() == 0
    assert [(n.host, n.port) for n in client.startup_nodes] == [("n1", 7000), ("n2", 7001)]
    kw = client.connection_kwargs
    assert kw["connection_class"] is SSLConnection
    assert kw["ssl_cert_reqs"] == "none"
    assert kw["password"] == "pw"
    assert kw["socket_timeout"] == 2.0
