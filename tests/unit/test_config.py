"""Settings: defaults < YAML file < environment < overrides, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.config import (
    DEFAULT_SYMBOLS,
    load_settings,
    parse_symbols,
    public_view,
    redact_url,
)
from runner.errors import ConfigError
from runner.redact import secret_values

SECRET = "sk-or-v1-very-secret-key-0123456789"


def write_yaml(tmp_path: Path, text: str, name: str = "runner.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(
    overrides: dict[str, Any] | None = None,
    config_file: Path | None = None,
    environ: dict[str, str] | None = None,
) -> str:
    """The message of the ConfigError that loading these settings raises (asserted one line)."""
    with pytest.raises(ConfigError) as info:
        load_settings(config_file, overrides, environ={} if environ is None else environ)
    message = str(info.value)
    assert message
    assert "\n" not in message, f"not one line: {message!r}"
    return message


# Defaults ------------------------------------------------------------------------------------


def test_defaults_follow_the_specification() -> None:
    s = load_settings(None, None, environ={})

    assert s.symbols == DEFAULT_SYMBOLS
    assert len(s.symbols) == 20
    assert s.symbols[:2] == ["ETH/USD", "BTC/USD"]
    assert s.schedule == "*/1 * * * *"
    assert s.timezone == "UTC"
    assert (s.parallel.max_concurrent, s.parallel.min_concurrent) == (10, 3)
    assert s.timeouts.symbol_timeout_seconds == 10
    assert s.timeouts.symbol_timeout_max_seconds == 15
    assert s.timeouts.total_timeout_seconds == 50
    assert (s.locks.ttl_seconds, s.locks.stale_threshold_seconds) == (90, 120)
    assert s.locks.redis_key_prefix == "signal:lock:"
    assert (s.heartbeat.ttl_seconds, s.heartbeat.interval_seconds) == (30, 10)
    assert (s.retry.max_attempts, s.retry.delay_seconds) == (2, 5)
    llm = s.circuit_breaker.llm_service
    assert (llm.failure_threshold, llm.recovery_timeout_seconds) == (5, 60)
    assert (llm.half_open_max_calls, llm.success_threshold) == (3, 2)
    redis_breaker = s.circuit_breaker.redis
    assert (redis_breaker.failure_threshold, redis_breaker.recovery_timeout_seconds) == (3, 30)
    assert s.adaptive.latency_window_size == 10
    assert (s.adaptive.p95_threshold_ms, s.adaptive.p99_threshold_ms) == (8000, 9000)
    assert (s.adaptive.backpressure_max_overruns, s.adaptive.cooldown_cycles) == (3, 2)
    assert s.graceful_shutdown.timeout_seconds == 30
    assert s.rate_limit.requests_per_minute == 100
    assert s.analyzer.backend == "builtin"
    assert s.analyzer.base_url == "https://openrouter.ai/api/v1"
    assert s.analyzer.agent == "signal-generator"
    assert s.analyzer.api_key is None
    assert s.market.source == "synthetic"
    assert s.redis.url is None
    assert s.redis.key_prefix == ""
    assert s.redis.socket_timeout_seconds == 2
    assert (s.publish.stream, s.publish.channel, s.publish.latest_hash) == (
        "signals:raw",
        "channel:raw-signals",
        "signals:latest",
    )
    assert s.publish.stream_maxlen == 10000
    assert s.metrics.pushgateway_url is None
    assert s.metrics.job == "autonomous_runner"
    assert s.maintenance_windows == []


def test_selected_symbols_are_capped_by_max_symbols() -> None:
    s = load_settings(None, {"max_symbols": 3}, environ={})

    assert s.selected_symbols() == ["ETH/USD", "BTC/USD", "SOL/USD"]
    assert len(s.symbols) == 20


def test_duplicate_symbols_are_kept_once_in_order() -> None:
    s = load_settings(None, {"symbols": ["BTC/USD", "ETH/USD", "BTC/USD"]}, environ={})

    assert s.symbols == ["BTC/USD", "ETH/USD"]


# Precedence ----------------------------------------------------------------------------------


YAML = """\
autonomous_runner:
  instance_id: from-file
  symbols: [ETH/USD, BTC/USD]
  timeouts:
    symbol_timeout_seconds: 8
    total_timeout_seconds: 30
  parallel:
    max_concurrent: 6
  redis:
    url: redis://file-host:6379/0
"""


def test_yaml_file_overrides_defaults(tmp_path: Path) -> None:
    s = load_settings(write_yaml(tmp_path, YAML), None, environ={})

    assert s.instance_id == "from-file"
    assert s.symbols == ["ETH/USD", "BTC/USD"]
    assert s.timeouts.symbol_timeout_seconds == 8
    assert s.timeouts.total_timeout_seconds == 30
    assert s.timeouts.symbol_timeout_max_seconds == 15  # untouched keys keep their defaults
    assert s.parallel.max_concurrent == 6
    assert s.parallel.min_concurrent == 3
    assert s.redis.url == "redis://file-host:6379/0"


def test_runner_config_in_environ_names_the_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, YAML)

    s = load_settings(None, None, environ={"RUNNER_CONFIG": str(path)})

    assert s.instance_id == "from-file"


def test_runner_config_in_the_process_environment_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNNER_CONFIG", str(write_yaml(tmp_path, YAML)))

    s = load_settings()  # environ defaults to os.environ; RUNNER_CONFIG is no setting of its own

    assert s.instance_id == "from-file"


def test_explicit_config_file_wins_over_runner_config(tmp_path: Path) -> None:
    chosen = write_yaml(tmp_path, "autonomous_runner:\n  instance_id: chosen\n", "a.yaml")
    other = write_yaml(tmp_path, "autonomous_runner:\n  instance_id: other\n", "b.yaml")

    s = load_settings(chosen, None, environ={"RUNNER_CONFIG": str(other)})

    assert s.instance_id == "chosen"


def test_empty_yaml_file_means_defaults(tmp_path: Path) -> None:
    assert load_settings(write_yaml(tmp_path, ""), None, environ={}).symbols == DEFAULT_SYMBOLS
    bare = write_yaml(tmp_path, "autonomous_runner:\n", "bare.yaml")
    assert load_settings(bare, None, environ={}).timeouts.total_timeout_seconds == 50


def test_runner_section_key_environment_overrides_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNNER_TIMEOUTS__TOTAL_TIMEOUT_SECONDS", "40")
    monkeypatch.setenv("RUNNER_PARALLEL__MAX_CONCURRENT", "4")
    monkeypatch.setenv("RUNNER_ANALYZER__BACKEND", "openai")

    s = load_settings(write_yaml(tmp_path, YAML), None, environ={})

    assert s.timeouts.total_timeout_seconds == 40
    assert s.timeouts.symbol_timeout_seconds == 8  # still from the file: sources merge key by key
    assert s.parallel.max_concurrent == 4
    assert s.analyzer.backend == "openai"


def test_top_level_list_from_environment_is_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_SYMBOLS", '["SOL/USD", "ETH/USD"]')

    assert load_settings(None, None, environ={}).symbols == ["SOL/USD", "ETH/USD"]


def test_empty_environment_values_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_TIMEOUTS__TOTAL_TIMEOUT_SECONDS", "")

    s = load_settings(None, None, environ={"REDIS_URL": "", "INSTANCE_ID": ""})

    assert s.timeouts.total_timeout_seconds == 50
    assert s.redis.url is None
    assert s.instance_id is None


@pytest.mark.parametrize(
    ("name", "value", "read"),
    [
        ("REDIS_URL", "redis://env-host:6380/1", lambda s: s.redis.url),
        ("INSTANCE_ID", "pod-7", lambda s: s.instance_id),
        ("LOG_LEVEL", "DEBUG", lambda s: s.log_level),
        ("MAX_SYMBOLS", "5", lambda s: s.max_symbols),
        ("OPENROUTER_API_KEY", SECRET, lambda s: s.analyzer.api_key.get_secret_value()),
        ("PUSHGATEWAY_URL", "http://gateway:9091", lambda s: s.metrics.pushgateway_url),
        ("OPENCODE_URL", "http://opencode:4096", lambda s: s.analyzer.opencode_url),
    ],
)
def test_well_known_environment_names_fill_their_setting(name: str, value: str, read: Any) -> None:
    s = load_settings(None, None, environ={name: value})

    expected: Any = int(value) if name == "MAX_SYMBOLS" else value
    assert read(s) == expected


def test_log_level_is_case_insensitive() -> None:
    assert load_settings(None, None, environ={"LOG_LEVEL": "warning"}).log_level == "WARNING"


def test_well_known_environment_names_override_yaml(tmp_path: Path) -> None:
    s = load_settings(
        write_yaml(tmp_path, YAML),
        None,
        environ={"REDIS_URL": "redis://env-host:6379/0", "INSTANCE_ID": "env"},
    )

    assert s.redis.url == "redis://env-host:6379/0"
    assert s.instance_id == "env"


def test_overrides_beat_environment_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_TIMEOUTS__TOTAL_TIMEOUT_SECONDS", "40")

    s = load_settings(
        write_yaml(tmp_path, YAML),
        {"timeouts": {"total_timeout_seconds": 20}, "instance_id": "flag", "symbols": ["SOL/USD"]},
        environ={"INSTANCE_ID": "env"},
    )

    assert s.timeouts.total_timeout_seconds == 20
    assert s.timeouts.symbol_timeout_seconds == 8  # the file's, under a partial override
    assert s.instance_id == "flag"
    assert s.symbols == ["SOL/USD"]


# ${VAR:-default} expansion -------------------------------------------------------------------


EXPANDING = """\
autonomous_runner:
  redis:
    url: redis://${REDIS_HOST:-localhost}:${REDIS_PORT:-6379}/0
  instance_id: ${POD_NAME}
  metrics:
    pushgateway_url: ${GATEWAY:-http://default-gateway:9091}
  symbols:
    - ${FIRST_SYMBOL:-ETH/USD}
"""


def test_yaml_strings_expand_variables_with_defaults(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, EXPANDING)

    s = load_settings(
        path, None, environ={"REDIS_HOST": "cache", "POD_NAME": "pod-3", "FIRST_SYMBOL": "SOL/USD"}
    )

    assert s.redis.url == "redis://cache:6379/0"
    assert s.instance_id == "pod-3"
    assert s.metrics.pushgateway_url == "http://default-gateway:9091"
    assert s.symbols == ["SOL/USD"]


def test_unset_or_empty_variables_take_the_default_or_nothing(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, EXPANDING)

    s = load_settings(path, None, environ={"REDIS_HOST": ""})

    assert s.redis.url == "redis://localhost:6379/0"
    assert s.instance_id is None  # ${POD_NAME} unset and no default: empty, so unset


# Bad input: one line naming the field and the bad value ---------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field", "bad"),
    [
        ({"bogus": 1}, "autonomous_runner.bogus", "unknown"),
        ({"timeouts": {"symbol_timout_seconds": 5}}, "timeouts.symbol_timout_seconds", "unknown"),
        ({"circuit_breaker": {"llm_service": {"threshold": 5}}}, "llm_service.threshold", "unknown"),
        ({"parallel": {"max_concurrent": "many"}}, "parallel.max_concurrent", "'many'"),
        ({"symbols": "ETH/USD"}, "symbols", "'ETH/USD'"),
        ({"timeouts": {"symbol_timeout_seconds": 0}}, "timeouts.symbol_timeout_seconds", "0"),
        ({"timeouts": {"total_timeout_seconds": -5}}, "timeouts.total_timeout_seconds", "-5"),
        ({"locks": {"ttl_seconds": 0}}, "locks.ttl_seconds", "0"),
        ({"symbols": []}, "symbols", "at least one symbol"),
        ({"symbols": ["eth/usd"]}, "symbols[0]", "'eth/usd'"),
        ({"symbols": ["ETH/USD", "ETHUSD"]}, "symbols[1]", "'ETHUSD'"),
        ({"symbols": ["ETH / USD"]}, "symbols[0]", "'ETH / USD'"),
        ({"symbols": [" ETH/USD"]}, "symbols[0]", "' ETH/USD'"),
        ({"redis": {"url": "http://localhost:6379"}}, "redis.url", "'http://localhost:6379'"),
        ({"redis": {"url": "redis://localhost:99999/0"}}, "redis.url", "99999"),
        ({"redis": {"url": "redis://localhost:port/0"}}, "redis.url", "localhost:port"),
        ({"redis": {"url": "redis:///0"}}, "redis.url", "redis:///0"),
        ({"parallel": {"min_concurrent": 5, "max_concurrent": 2}}, "min_concurrent", "5 > 2"),
        (
            {"timeouts": {"symbol_timeout_seconds": 20, "symbol_timeout_max_seconds": 15}},
            "symbol_timeout_max_seconds",
            "15",
        ),
        ({"maintenance_windows": ["25:00-26:00"]}, "maintenance_windows[0]", "'25:00-26:00'"),
        ({"maintenance_windows": ["02:00"]}, "maintenance_windows[0]", "'02:00'"),
        ({"analyzer": {"backend": "gpt"}}, "analyzer.backend", "'gpt'"),
        ({"log_level": "LOUD"}, "log_level", "'LOUD'"),
        ({"instance_id": "has space"}, "instance_id", "'has space'"),
        ({"max_symbols": 0}, "max_symbols", "0"),
    ],
)
def test_bad_setting_is_one_line_naming_field_and_value(
    overrides: dict[str, Any], field: str, bad: str
) -> None:
    message = config_error(overrides)

    assert field in message
    assert bad in message


def test_fractional_integer_error_shows_the_bad_value() -> None:
    message = config_error({"retry": {"max_attempts": 1.5}})

    assert "retry.max_attempts" in message
    assert "1.5" in message


def test_unknown_key_in_yaml_is_named_with_its_path(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "autonomous_runner:\n  locks:\n    ttl: 90\n")

    assert "autonomous_runner.locks.ttl: unknown setting" in config_error(config_file=path)


def test_bad_value_from_environment_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_PARALLEL__MAX_CONCURRENT", "lots")

    message = config_error()

    assert "parallel.max_concurrent" in message
    assert "'lots'" in message


def test_bad_well_known_environment_value_is_a_config_error() -> None:
    message = config_error(environ={"MAX_SYMBOLS": "-1"})

    assert "max_symbols" in message
    assert "-1" in message


def test_yaml_with_another_root_key_is_refused(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "runner:\n  symbols: [ETH/USD]\n")

    message = config_error(config_file=path)

    assert str(path) in message
    assert "autonomous_runner" in message
    assert "runner" in message.split("found", 1)[1]


def test_yaml_with_an_extra_root_key_is_refused(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "autonomous_runner: {}\nextra: 1\n")

    assert "extra" in config_error(config_file=path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "autonomous_runner: [1, 2]\n"])
def test_yaml_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str) -> None:
    path = write_yaml(tmp_path, text)

    assert str(path) in config_error(config_file=path)


def test_invalid_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "autonomous_runner:\n  symbols: [ETH/USD\n  timeouts: {\n")

    message = config_error(config_file=path)

    assert str(path) in message
    assert "line" in message


def test_unreadable_config_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    message = config_error(config_file=missing)

    assert str(missing) in message
    assert "cannot read" in message


def test_missing_file_named_by_runner_config_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "gone.yaml"

    assert str(missing) in config_error(environ={"RUNNER_CONFIG": str(missing)})


def test_directory_as_config_file_is_a_config_error(tmp_path: Path) -> None:
    assert "cannot read" in config_error(config_file=tmp_path)


# Secrets -------------------------------------------------------------------------------------


def test_api_key_is_masked_in_the_public_view() -> None:
    s = load_settings(
        None, None, environ={"OPENROUTER_API_KEY": SECRET, "OPENCODE_SERVER_PASSWORD": "hunter22"}
    )

    view = public_view(s)

    assert view["analyzer"]["api_key"] == "***"
    assert view["analyzer"]["opencode_password"] == "***"
    dumped = json.dumps(view)
    assert SECRET not in dumped
    assert "hunter22" not in dumped
    assert SECRET not in repr(s)
    assert s.analyzer.api_key is not None
    assert s.analyzer.api_key.get_secret_value() == SECRET


def test_the_api_token_comes_from_runner_api_token_and_is_masked_everywhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUNNER_API_TOKEN", "tok-0123456789")  # a RUNNER_ name that is an alias

    s = load_settings(None, None)

    assert s.api.token is not None
    assert s.api.token.get_secret_value() == "tok-0123456789"
    assert public_view(s)["api"]["token"] == "***"
    assert "tok-0123456789" not in json.dumps(public_view(s))
    assert "tok-0123456789" not in repr(s)
    assert "tok-0123456789" in secret_values(s)  # so the log filter masks it


def test_the_event_stream_settings_are_checked() -> None:
    assert "sse_ping_seconds" in config_error(overrides={"api": {"sse_ping_seconds": 20}})
    assert "sse_client_queue" in config_error(overrides={"api": {"sse_client_queue": 3}})
    defaults = load_settings(None, None, environ={}).api
    assert defaults.token is None
    assert 0 < defaults.sse_ping_seconds <= 15


def test_public_view_without_secrets_shows_none() -> None:
    view = public_view(load_settings(None, None, environ={}))

    assert view["analyzer"]["api_key"] is None
    assert view["redis"]["url"] is None


def test_public_view_masks_the_redis_password() -> None:
    s = load_settings(None, None, environ={"REDIS_URL": "redis://user:s3cr3t-pw@cache:6379/2"})

    view = public_view(s)

    assert view["redis"]["url"] == "redis://user:***@cache:6379/2"
    assert "s3cr3t-pw" not in json.dumps(view)


def test_public_view_masks_credentials_in_the_pushgateway_url() -> None:
    s = load_settings(None, None, environ={"PUSHGATEWAY_URL": "http://ops:gw-s3cret@gateway:9091"})

    assert "gw-s3cret" not in json.dumps(public_view(s))


PG_PASSWORD = "pg-s3cret-9x"


def test_postgres_url_comes_from_postgres_url_and_is_masked_everywhere() -> None:
    url = f"postgresql://runner:{PG_PASSWORD}@db.example:5432/archive?sslmode=verify-full"
    s = load_settings(None, None, environ={"POSTGRES_URL": url})

    view = public_view(s)

    assert s.archive.postgres_url is not None
    assert s.archive.postgres_url.get_secret_value() == url
    assert (
        view["archive"]["postgres_url"]
        == "postgresql://runner:***@db.example:5432/archive?sslmode=verify-full"
    )
    assert PG_PASSWORD not in json.dumps(view)
    assert PG_PASSWORD not in repr(s)
    assert PG_PASSWORD in secret_values(s)


def test_a_password_in_the_postgres_url_query_is_masked_too() -> None:
    s = load_settings(None, None, environ={"POSTGRES_URL": f"postgresql://db/archive?password={PG_PASSWORD}"})

    assert PG_PASSWORD not in json.dumps(public_view(s))
    assert PG_PASSWORD in secret_values(s)


def test_without_postgres_url_there_is_no_archive() -> None:
    s = load_settings(None, {"archive": {"postgres_url": ""}}, environ={})

    assert s.archive.postgres_url is None
    assert public_view(s)["archive"]["postgres_url"] is None


def test_a_postgres_url_that_is_not_one_is_a_config_error_without_its_password() -> None:
    message = config_error(environ={"POSTGRES_URL": f"mysql://runner:{PG_PASSWORD}@db/archive"})

    assert "archive.postgres_url" in message
    assert "postgresql://" in message
    assert PG_PASSWORD not in message


def test_a_postgres_url_of_the_wrong_type_is_masked_in_the_error(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, f"autonomous_runner:\n  archive:\n    postgres_url: ['{PG_PASSWORD}']\n")

    message = config_error(config_file=path)

    assert "archive.postgres_url" in message
    assert PG_PASSWORD not in message


def test_secret_never_appears_in_an_error_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_PARALLEL__MAX_CONCURRENT", "0")

    message = config_error(environ={"OPENROUTER_API_KEY": SECRET})

    assert SECRET not in message
    assert "parallel.max_concurrent" in message


def test_secret_of_the_wrong_type_is_masked_in_the_error(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, f"autonomous_runner:\n  analyzer:\n    api_key: ['{SECRET}']\n")

    message = config_error(config_file=path)

    assert "analyzer.api_key" in message
    assert SECRET not in message
    assert "***" in message


def test_bad_redis_url_error_masks_its_password() -> None:
    message = config_error({"redis": {"url": "http://admin:pa55word@cache:6379"}})

    assert "redis.url" in message
    assert "pa55word" not in message
    assert "admin:***@cache" in message


def test_bad_redis_url_error_never_shows_a_password_with_a_slash() -> None:
    message = config_error({"redis": {"url": "redis://:pa/ss-w0rd@cache:6379/0"}})

    assert "ss-w0rd" not in message


def test_bad_port_is_shown_even_when_the_url_has_a_password() -> None:
    message = config_error({"redis": {"url": "redis://:pw@cache:99999/0"}})

    assert "99999" in message
    assert ":pw@" not in message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://:pw@localhost:6379/0", "redis://:***@localhost:6379/0"),
        (
            "rediss://user:pw@cache.example:6380/1?ssl_cert_reqs=none",
            "rediss://user:***@cache.example:6380/1?ssl_cert_reqs=none",
        ),
        ("redis://user:pw@cache/0", "redis://user:***@cache/0"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_redact_url_masks_only_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_url_keeps_an_ipv6_host_readable() -> None:
    assert redact_url("redis://:pw@[::1]:6379/0") == "redis://:***@[::1]:6379/0"


def test_valid_redis_urls_are_accepted() -> None:
    for url in (
        "redis://localhost",
        "rediss://:pw@cache:6380/1",
        "unix:///tmp/redis.sock",
        "redis://[::1]:6379",
    ):
        assert load_settings(None, {"redis": {"url": url}}, environ={}).redis.url == url


# parse_symbols (--symbols) -------------------------------------------------------------------


def test_parse_symbols_trims_and_deduplicates() -> None:
    assert parse_symbols(" ETH/USD, BTC/USD,,ETH/USD ") == ["ETH/USD", "BTC/USD"]


@pytest.mark.parametrize("text", ["", " , ", "eth/usd", "ETH/USD,BTCUSD", "ETH-USD", "ETH/USD/EUR"])
def test_parse_symbols_refuses_bad_lists(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_symbols(text)

    assert str(info.value).startswith("--symbols:")
    assert "\n" not in str(info.value)


# Whitespace smuggled past the patterns ---------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"symbols": ["ETH/USD\n"]},
        {"instance_id": "pod-1\n"},
        {"maintenance_windows": ["02:00-02:30\n"]},
    ],
)
def test_trailing_newline_is_refused(overrides: dict[str, Any]) -> None:
    assert next(iter(overrides)) in config_error(overrides)


# Property: any symbol text is a setting or a one-line ConfigError -----------------------------


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.text(max_size=40))
def test_any_symbol_text_gives_settings_or_one_line_config_error(text: str) -> None:
    try:
        s = load_settings(None, {"symbols": [text]}, environ={})
    except ConfigError as exc:
        message = str(exc)
        assert message
        assert "\n" not in message
        assert "symbols" in message
    else:
        assert s.symbols == [text]
        assert "/" in text
