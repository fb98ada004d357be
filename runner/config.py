"""Settings: defaults < YAML file < environment < command-line flags, validated in one place.

The YAML file has the root ``autonomous_runner:`` and the specification's keys. The environment
gives every setting as ``RUNNER_<SECTION>__<KEY>`` plus the well-known names (``REDIS_URL``,
``INSTANCE_ID``, ``OPENROUTER_API_KEY`` ...). Anything invalid becomes one ``ConfigError`` line
naming the field and the bad value; secrets are ``SecretStr`` and never shown.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from runner import redis_url
from runner.errors import ConfigError
from runner.redact import masked_url
from runner.redis_url import redact_url as redact_url

ROOT_KEY = "autonomous_runner"

SYMBOL_RE = re.compile(r"^[A-Z0-9]{1,20}/[A-Z0-9]{1,20}$")
INSTANCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
CRON_RE = re.compile(r"[0-9A-Za-z*/,?#-]+(\s+[0-9A-Za-z*/,?#-]+){4,5}")
WINDOW_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")

DEFAULT_SYMBOLS = [
    "ETH/USD", "BTC/USD", "SOL/USD", "DOGE/USD", "AVAX/USD", "MATIC/USD", "LINK/USD",
    "UNI/USD", "AAVE/USD", "SNX/USD", "CRV/USD", "COMP/USD", "MKR/USD", "SUSHI/USD",
    "YFI/USD", "1INCH/USD", "BAL/USD", "LDO/USD", "RPL/USD", "FXS/USD",
]  # fmt: skip

#: Well-known environment names and the setting each one fills.
ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "REDIS_URL": ("redis", "url"),
    "INSTANCE_ID": ("instance_id",),
    "LOG_LEVEL": ("log_level",),
    "MAX_SYMBOLS": ("max_symbols",),
    "OPENROUTER_API_KEY": ("analyzer", "api_key"),
    "OPENCODE_URL": ("analyzer", "opencode_url"),
    "OPENCODE_SERVER_PASSWORD": ("analyzer", "opencode_password"),
    "PUSHGATEWAY_URL": ("metrics", "pushgateway_url"),
    "POSTGRES_URL": ("archive", "postgres_url"),
    "RUNNER_API_TOKEN": ("api", "token"),
}

#: The settings that hold secrets, as (section, key): masked in ``runner config``, never logged.
SECRETS = (("analyzer", "api_key"), ("analyzer", "opencode_password"), ("api", "token"))
SECRET_FIELDS = frozenset(key for _, key in SECRETS)


def validate_symbol(symbol: str) -> str:
    """A symbol is ``BASE/QUOTE`` in upper-case letters and digits."""
    if not isinstance(symbol, str) or not SYMBOL_RE.fullmatch(symbol):
        raise ValueError(f"symbol must look like BASE/QUOTE in upper-case letters and digits, got {symbol!r}")
    return symbol


Symbol = Annotated[str, AfterValidator(validate_symbol)]


class Section(BaseModel):
    """A settings section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class Parallel(Section):
    max_concurrent: PositiveInt = 10
    min_concurrent: PositiveInt = 3
    batch_delay_ms: NonNegativeInt = 1000


class Timeouts(Section):
    symbol_timeout_seconds: PositiveFloat = 10.0
    symbol_timeout_max_seconds: PositiveFloat = 15.0
    total_timeout_seconds: PositiveFloat = 50.0

    @model_validator(mode="after")
    def _ordered(self) -> Timeouts:
        if self.symbol_timeout_max_seconds < self.symbol_timeout_seconds:
            raise ValueError(
                "symbol_timeout_max_seconds must be >= symbol_timeout_seconds "
                f"(got {self.symbol_timeout_max_seconds} < {self.symbol_timeout_seconds})"
            )
        return self


class Locks(Section):
    ttl_seconds: PositiveInt = 90
    stale_threshold_seconds: PositiveInt = 120
    redis_key_prefix: str = "signal:lock:"


class Heartbeat(Section):
    ttl_seconds: PositiveInt = 30
    interval_seconds: PositiveFloat = 10.0


class Retry(Section):
    max_attempts: PositiveInt = 2
    delay_seconds: NonNegativeFloat = 5.0


class Breaker(Section):
    failure_threshold: PositiveInt = 5
    recovery_timeout_seconds: PositiveFloat = 60.0
    half_open_max_calls: PositiveInt = 3
    success_threshold: PositiveInt = 2

    @model_validator(mode="after")
    def _closable(self) -> Breaker:
        if self.success_threshold > self.half_open_max_calls:
            raise ValueError(
                "success_threshold must be <= half_open_max_calls, or a half-open breaker can never "
                f"close (got {self.success_threshold} > {self.half_open_max_calls})"
            )
        return self


class RedisBreaker(Breaker):
    """The Redis breaker's own defaults, so a partial override keeps the others."""

    failure_threshold: PositiveInt = 3
    recovery_timeout_seconds: PositiveFloat = 30.0
    half_open_max_calls: PositiveInt = 2
    success_threshold: PositiveInt = 1


class CircuitBreakers(Section):
    llm_service: Breaker = Breaker()
    #: Used by ``runner serve`` (kept in the process: it cannot live in the Redis it protects).
    redis: RedisBreaker = RedisBreaker()


class Adaptive(Section):
    latency_window_size: PositiveInt = 10
    p95_threshold_ms: PositiveFloat = 8000
    p99_threshold_ms: PositiveFloat = 9000
    backpressure_max_overruns: PositiveInt = 3
    cooldown_cycles: NonNegativeInt = 2
    #: Latency samples older than this no longer count, so a high-latency skip cannot repeat
    #: forever once nothing new is measured.
    sample_max_age_seconds: PositiveFloat = 600
    #: Consecutive failures that belong to a symbol before it is paused.
    pause_after_failures: PositiveInt = 3


class GracefulShutdown(Section):
    timeout_seconds: PositiveFloat = 30.0
    drain_existing: bool = True


class RateLimit(Section):
    requests_per_minute: PositiveInt = 100


class AnalyzerSettings(Section):
    backend: Literal["builtin", "openai", "opencode", "plugin"] = "builtin"
    #: For ``backend: plugin``: ``module:factory``, where ``factory(settings)`` returns an analyzer.
    plugin: str | None = None
    model: str | None = None
    base_url: str = "https://openrouter.ai/api/v1"
    opencode_url: str | None = None
    agent: str = "signal-generator"
    fallback_models: list[str] = Field(default_factory=list)
    temperature: float = Field(default=0.0, ge=0, le=2)
    max_tokens: PositiveInt = 600
    daily_budget_usd: PositiveFloat | None = None
    api_key: SecretStr | None = None
    opencode_password: SecretStr | None = None


StageName = Literal["signal", "score", "advise"]
STAGE_ORDER: tuple[StageName, ...] = ("signal", "score", "advise")


class StageSettings(Section):
    """One stage after the signal: who answers it (``builtin`` by default) and how long it may take."""

    backend: Literal["builtin", "openai", "opencode", "plugin"] = "builtin"
    #: For ``backend: plugin``: ``module:factory``, where ``factory(settings, stage)`` returns the stage.
    plugin: str | None = None
    #: openai: model id; opencode: provider/model. Default: ``analyzer.model``.
    model: str | None = None
    #: openai: the API. Default: ``analyzer.base_url``.
    base_url: str | None = None
    #: opencode: the agent that answers this stage.
    agent: str = ""
    #: Seconds one attempt may take; default: the adaptive symbol timeout.
    timeout_seconds: PositiveFloat | None = None
    #: ``none``: the stage may only answer; ``agent``: an OpenCode agent keeps the tools and MCP
    #: servers its own config grants (for agents that look things up).
    tools: Literal["none", "agent"] = "none"


class ScoreStage(StageSettings):
    agent: str = "signal-scorer"


class AdviseStage(StageSettings):
    agent: str = "trade-advisor"


class ReportStage(StageSettings):
    """The report after every chain; ``report: false`` switches it off."""

    enabled: bool = True
    agent: str = "cycle-reporter"

    @model_validator(mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return {"enabled": value}
        if isinstance(value, str):
            text = value.strip()
            if text.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                return {"enabled": text.lower() in ("true", "1", "yes", "on")}
            if text.startswith("{"):
                import json

                try:
                    return json.loads(text)
                except ValueError:
                    pass
            raise ValueError(f"must be true or false, or a section as JSON (got {value[:60]!r})")
        return value


class Risk(Section):
    """Limits applied in code to every advice after the stage answers, never left to a model."""

    #: The largest position one advice may size, in percent of the book.
    max_position_size_pct: Annotated[float, Field(gt=0, le=100)] = 10.0
    #: Summed over the cycle's advice, best score first.
    max_total_exposure_pct: Annotated[float, Field(gt=0, le=100)] = 50.0
    max_positions: Annotated[int, Field(ge=1, le=1000)] = 15


class Pipeline(Section):
    """Signal -> score -> advise per symbol, then a report per cycle (``signal`` is the analyzer)."""

    stages: list[StageName] = Field(default_factory=lambda: list(STAGE_ORDER))
    #: ``RUNNER_PIPELINE__REPORT=off`` is a switch, not JSON: the section's validator reads it.
    report: Annotated[ReportStage, NoDecode] = ReportStage()
    score: ScoreStage = ScoreStage()
    advise: AdviseStage = AdviseStage()

    @field_validator("stages")
    @classmethod
    def _ordered(cls, value: list[str]) -> list[str]:
        if not value or value[0] != "signal":
            raise ValueError(f"must start with signal (got {value!r})")
        repeated = sorted({s for s in value if value.count(s) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(repeated)} more than once (got {value!r})")
        if value != [s for s in STAGE_ORDER if s in value]:
            raise ValueError(f"must keep the order signal, score, advise (got {value!r})")
        return value


class Market(Section):
    source: Literal["synthetic", "exchange"] = "synthetic"
    #: One-minute candles per symbol: the built-in analyzer needs 35 (EMA21 + RSI14).
    candles: Annotated[int, Field(ge=35, le=720)] = 60
    exchange_url: str = "https://api.kraken.com"


class Outcomes(Section):
    """Scoring the signals that matured, from the candles each cycle fetches anyway."""

    enabled: bool = True
    #: Minutes after a signal at which its return is scored.
    horizons_minutes: list[Annotated[int, Field(ge=1, le=1440)]] = Field(default_factory=lambda: [5, 15, 60])
    #: A BUY hits when its return beats this (in basis points), a SELL when it is below minus
    #: this, a HOLD when the move stays within it.
    fee_bps: Annotated[float, Field(ge=0, le=1000)] = 10.0

    @field_validator("horizons_minutes")
    @classmethod
    def _horizons(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("needs at least one horizon (got [])")
        return sorted(set(value))


class RedisSettings(Section):
    #: ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``, ``redis+cluster://`` (and the
    #: TLS forms of the last two); see ``runner.redis_url``.
    url: str | None = None
    #: Goes before every key; on a cluster it becomes a hash tag (``effective_key_prefix``).
    key_prefix: str = ""
    socket_timeout_seconds: PositiveFloat = 2.0
    #: How long the end of a cycle waits for a replica to acknowledge what the run published
    #: (where the master has replicas); a document no replica confirms is ``unconfirmed``.
    replica_ack_timeout_seconds: PositiveFloat = 1.0

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        redis_url.parse(value)  # raises ValueError with one line, the URL redacted
        return value

    def target(self) -> redis_url.Target | None:
        """What ``url`` names (None: no URL, the embedded Redis)."""
        return redis_url.parse(self.url) if self.url else None

    def topology(self) -> redis_url.Topology:
        target = self.target()
        return target.topology if target else redis_url.Topology.SINGLE

    def effective_key_prefix(self) -> str:
        """``key_prefix``, made a hash tag on a cluster (``{runner}:`` when none is set)."""
        if self.topology() is redis_url.Topology.CLUSTER:
            return redis_url.cluster_prefix(self.key_prefix)
        return self.key_prefix


class Publish(Section):
    stream: str = Field(default="signals:raw", min_length=1)
    stream_maxlen: PositiveInt = 10000
    channel: str = Field(default="channel:raw-signals", min_length=1)
    latest_hash: str = Field(default="signals:latest", min_length=1)


class MetricsSettings(Section):
    pushgateway_url: str | None = None
    job: str = Field(default="autonomous_runner", min_length=1)
    push_timeout_seconds: PositiveFloat = 2.0


#: Splits ``RUNNER_NOTIFY__URLS`` at the commas (and spaces) that start a new ``scheme://``, so
#: a comma inside one URL (``mailto://...?to=a@x.org,b@x.org``) stays in it.
_URL_LIST_SPLIT = re.compile(r"[\s,]+(?=[A-Za-z][A-Za-z0-9+.-]*://)")


def _apprise_url(secret: SecretStr) -> SecretStr:
    """An Apprise URL Apprise can use; the error names the service, never the secret parts."""
    url = secret.get_secret_value().strip()
    from runner.delivery import check_url  # loads Apprise: only when URLs are set

    problem = check_url(url)
    if problem:
        raise ValueError(problem)
    return SecretStr(url)


class NotifySettings(Section):
    """Where and how transitions are notified (Apprise URLs; they carry tokens: secrets)."""

    urls: Annotated[list[Annotated[SecretStr, AfterValidator(_apprise_url)]], NoDecode] = Field(
        default_factory=list
    )
    #: One send to every URL, concurrently, gives up after this long.
    timeout_seconds: PositiveFloat = 3.0
    #: Sends of one notification (the first and the retries by later runs) before it is dropped.
    max_attempts: PositiveInt = 5
    #: Failed cycles in a row of one shard that make ``cycles_failing``.
    failing_cycles: PositiveInt = 3

    @field_validator("urls", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                try:
                    return json.loads(text)
                except ValueError as exc:
                    raise ValueError("must be comma-separated Apprise URLs or a JSON list") from exc
            return [u.strip().strip(",") for u in _URL_LIST_SPLIT.split(text) if u.strip(" ,")]
        return value


class ArchiveSettings(Section):
    """The PostgreSQL archive of every published document and cycle summary (off when no URL)."""

    #: ``postgresql://user:password@host:5432/db?sslmode=verify-full`` (a libpq URL); a secret.
    postgres_url: SecretStr | None = None
    #: Seconds the write may take at most, within what is left of the cycle's deadline.
    timeout_seconds: PositiveFloat = 5.0
    #: Most documents copied from each stream in one run; a backlog is copied over several runs.
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 2000

    @field_validator("postgres_url", mode="before")
    @classmethod
    def _empty(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("postgres_url")
    @classmethod
    def _url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        url = value.get_secret_value()
        if urlsplit(url).scheme not in ("postgresql", "postgres"):
            raise ValueError(f"must be a postgresql:// URL, got {redact_dsn(url)!r}")
        # libpq takes several hosts (``h1:5432,h2:5432``): each port must be one.
        for host in urlsplit(url).netloc.rpartition("@")[2].split(","):
            tail = host.rpartition("]")[2] if host.startswith("[") else host
            port = tail.rpartition(":")[2] if ":" in tail else ""
            if port and not (port.isdigit() and 0 < int(port) < 65536):
                raise ValueError(f"has a bad port {port[:20]!r}: {redact_dsn(url)!r}")
        return value


class Api(Section):
    """``runner serve``'s HTTP API and its Server-Sent Events."""

    #: Bearer token of the write routes (``POST /api/cycles``, ``POST /api/kill-switch``); or
    #: ``RUNNER_API_TOKEN``. Without one, those routes answer 403.
    token: SecretStr | None = None
    #: Seconds between the comment pings every event stream gets (proxies close idle streams).
    sse_ping_seconds: float = Field(default=10.0, gt=0, le=15)
    #: Events an event-stream client may have waiting; one that falls further behind is
    #: disconnected (it resumes from its last event id), never buffered without bound.
    sse_client_queue: Annotated[int, Field(ge=16, le=1_000_000)] = 4096

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        # A token read from a file often ends in a newline: no client could ever send it.
        token = value.get_secret_value() if value is not None else ""
        if token and token != token.strip():
            raise ValueError(
                "has whitespace at its start or end (a newline from the file it came from?); "
                "no client can send it"
            )
        return value


def _check_window(value: str) -> str:
    if not isinstance(value, str) or not WINDOW_RE.fullmatch(value):
        raise ValueError(f"maintenance window must look like HH:MM-HH:MM (UTC), got {value!r}")
    return value


class Settings(BaseSettings):
    """Every setting of the runner. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="RUNNER_",
        env_nested_delimiter="__",
        env_ignore_empty=True,
        extra="forbid",
        validate_default=True,
    )

    schedule: str = "*/1 * * * *"
    timezone: Literal["UTC"] = "UTC"
    instance_id: str | None = None
    symbols: list[Symbol] = Field(default_factory=lambda: list(DEFAULT_SYMBOLS))
    max_symbols: PositiveInt | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: The minute this run was scheduled for (the CronJob's scheduled timestamp).
    scheduled_at: str | None = None
    #: The Job's name; a CronJob's Job name ends in its scheduled time in minutes since the epoch.
    job_name: str | None = None
    #: How many shards split the symbols; with ``JOB_COMPLETION_INDEX`` it picks this pod's shard.
    shards: PositiveInt = 1
    parallel: Parallel = Parallel()
    timeouts: Timeouts = Timeouts()
    locks: Locks = Locks()
    heartbeat: Heartbeat = Heartbeat()
    retry: Retry = Retry()
    circuit_breaker: CircuitBreakers = CircuitBreakers()
    adaptive: Adaptive = Adaptive()
    graceful_shutdown: GracefulShutdown = GracefulShutdown()
    rate_limit: RateLimit = RateLimit()
    analyzer: AnalyzerSettings = AnalyzerSettings()
    pipeline: Pipeline = Pipeline()
    risk: Risk = Risk()
    market: Market = Market()
    outcomes: Outcomes = Outcomes()
    redis: RedisSettings = RedisSettings()
    publish: Publish = Publish()
    metrics: MetricsSettings = MetricsSettings()
    notify: NotifySettings = NotifySettings()
    archive: ArchiveSettings = ArchiveSettings()
    api: Api = Api()
    maintenance_windows: list[Annotated[str, AfterValidator(_check_window)]] = Field(default_factory=list)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        # Five fields as in Kubernetes; `runner serve` also takes croniter's sixth (seconds) and
        # checks the expression fully when it starts (croniter is not imported by `cycle`).
        if not CRON_RE.fullmatch(value.strip()):
            raise ValueError(f"must be a five-field cron expression, got {value!r}")
        return value.strip()

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("symbols")
    @classmethod
    def _symbols(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one symbol")
        return list(dict.fromkeys(value))

    @field_validator("instance_id")
    @classmethod
    def _instance(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not INSTANCE_RE.fullmatch(value):
            raise ValueError(f"instance id must be letters, digits and . _ : - (at most 128), got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.parallel.min_concurrent > self.parallel.max_concurrent:
            raise ValueError(
                "parallel.min_concurrent must be <= parallel.max_concurrent "
                f"(got {self.parallel.min_concurrent} > {self.parallel.max_concurrent})"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            _DictSource(settings_cls, _ALIAS_VALUES.get() or {}),
            _DictSource(settings_cls, _FILE_VALUES.get() or {}),
        )

    def selected_symbols(self) -> list[str]:
        """Configured symbols capped by ``max_symbols``."""
        return self.symbols[: self.max_symbols] if self.max_symbols else list(self.symbols)


class _DictSource(PydanticBaseSettingsSource):
    """A settings source holding an already-parsed dict (the YAML file, the env aliases)."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


# The sources below are per load; context variables keep ``load_settings`` re-entrant.
_FILE_VALUES: ContextVar[dict[str, Any] | None] = ContextVar("_FILE_VALUES", default=None)
_ALIAS_VALUES: ContextVar[dict[str, Any] | None] = ContextVar("_ALIAS_VALUES", default=None)

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: Any, environ: Mapping[str, str]) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in YAML strings, as the specification's file uses."""
    if isinstance(value, str):
        return _ENV_REF.sub(lambda m: environ.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [_expand(v, environ) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, environ) for k, v in value.items()}
    return value


def read_config_file(path: Path, environ: Mapping[str, str]) -> dict[str, Any]:
    """Parse the YAML file and return what is under its ``autonomous_runner:`` root."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path}: not UTF-8 text (byte {exc.start})") from exc
    import yaml  # only when there is a file to read

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {path}: {problem}{where}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict) or set(data) != {ROOT_KEY}:
        found = ", ".join(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"config file {path}: the only root key must be '{ROOT_KEY}:' (found {found})")
    body = data[ROOT_KEY] or {}
    if not isinstance(body, dict):
        raise ConfigError(f"config file {path}: '{ROOT_KEY}:' must be a mapping")
    return dict(_expand(body, environ))


def _alias_values(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, path in ENV_ALIASES.items():
        raw = environ.get(name)
        if raw is None or raw == "":
            continue
        node = values
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = raw
    return values


def _describe(error: Mapping[str, Any], secret_fields: frozenset[str]) -> str:
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".")
    msg = str(error["msg"]).removeprefix("Value error, ")
    field = f"{ROOT_KEY}.{loc}" if loc else ROOT_KEY
    if error["type"] == "extra_forbidden":
        return f"{field}: unknown setting"
    secret = any(part in secret_fields for part in error["loc"])
    shown = "***" if secret else error.get("input")
    if error["type"] in ("value_error", "assertion_error"):
        return f"{field}: {msg}"  # our own validators already name the bad value
    return f"{field}: {msg} (got {shown!r})"


def load_settings(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the effective settings, or raise ``ConfigError`` with one line."""
    env = os.environ if environ is None else environ
    _check_prefixed(os.environ)
    path = config_file or (Path(env["RUNNER_CONFIG"]) if env.get("RUNNER_CONFIG") else None)
    file_values = read_config_file(path, env) if path else {}
    tokens = (_FILE_VALUES.set(file_values), _ALIAS_VALUES.set(_alias_values(env)))
    try:
        return Settings(**dict(overrides or {}))
    except SettingsError as exc:
        # pydantic-settings could not decode a complex value (a list or a section) from the
        # environment: it expects JSON there. Name the variable, nested ones too.
        field = str(exc).split('"')[1] if str(exc).count('"') >= 2 else "setting"
        name = _undecodable(field) or f"RUNNER_{field.upper()}"
        field = name.removeprefix("RUNNER_").lower().replace("__", ".")
        raw = os.environ.get(name, "")[:60]
        raise ConfigError(
            f"{ROOT_KEY}.{field} ({name}): must be JSON for a list or a section, "
            f"e.g. RUNNER_SYMBOLS='[\"ETH/USD\"]' (got {raw!r})"
        ) from exc
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0], SECRET_FIELDS)) from exc
    finally:
        _FILE_VALUES.reset(tokens[0])
        _ALIAS_VALUES.reset(tokens[1])


def _undecodable(field: str) -> str | None:
    """The ``RUNNER_<FIELD>...`` variable of a list or a section whose value is not JSON (the one
    pydantic-settings could not decode), if one is."""
    import json

    prefix = f"RUNNER_{field.upper()}"
    for name in sorted(os.environ):
        if name != prefix and not name.startswith(prefix + "__"):
            continue
        if not _complex(name.removeprefix("RUNNER_").lower().split("__")):
            continue
        try:
            json.loads(os.environ[name])
        except ValueError:
            return name
    return None


def _complex(path: list[str]) -> bool:
    """Whether the setting at ``path`` is a list, a mapping or a section (read as JSON)."""
    import typing

    model: Any = Settings
    annotation: Any = None
    for part in path:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return False
        annotation = fields[part].annotation
        options = typing.get_args(annotation) if typing.get_origin(annotation) is not None else (annotation,)
        model = next((a for a in options if isinstance(a, type) and issubclass(a, BaseModel)), None)
    origins = {typing.get_origin(a) for a in (typing.get_args(annotation) or (annotation,))}
    return model is not None or typing.get_origin(annotation) in (list, dict) or bool(origins & {list, dict})


#: Settings whose values are never shown, not even in an error message.
SECRET_FIELDS = frozenset({"api_key", "opencode_password", "postgres_url", "urls", "token"})

#: ``RUNNER_*`` variables that are not settings (``RUNNER_API_TOKEN`` is an alias of one).
NOT_SETTINGS = frozenset({"RUNNER_CONFIG", "RUNNER_STATE_DIR", "RUNNER_API_TOKEN"})


def _check_prefixed(environ: Mapping[str, str]) -> None:
    """A ``RUNNER_*`` variable that names no setting is a typo: say so instead of ignoring it."""
    for name in sorted(environ):
        if not name.startswith("RUNNER_") or name in NOT_SETTINGS:
            continue
        field = name[len("RUNNER_") :].split("__", 1)[0].lower()
        if field not in Settings.model_fields:
            raise ConfigError(f"{name}: unknown setting (no setting is called {field!r})")


def parse_symbols(text: str) -> list[str]:
    """``--symbols ETH/USD,BTC/USD`` -> a validated list; raises ``ConfigError``."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise ConfigError("--symbols: needs at least one symbol (got an empty list)")
    for item in items:
        try:
            validate_symbol(item)
        except ValueError as exc:
            raise ConfigError(f"--symbols: {exc}") from exc
    return list(dict.fromkeys(items))


_DSN_PASSWORD = re.compile(r"((?:^|[?&])(?:ssl)?password=)[^&]*", re.IGNORECASE)


def redact_dsn(url: str) -> str:
    """A PostgreSQL URL with its password masked, in the credentials and in the query
    (``?password=...``, ``sslpassword=...``)."""
    scheme, sep, rest = redact_url(url).partition("://")
    location, qmark, query = rest.partition("?")
    return f"{scheme}{sep}{location}{qmark}{_DSN_PASSWORD.sub(lambda m: m.group(1) + '***', query)}"


def public_view(settings: Settings) -> dict[str, Any]:
    """The effective settings with secrets masked, for ``runner config``."""
    data = settings.model_dump(mode="json")
    for section, key in SECRETS:
        if data[section][key] is not None:
            data[section][key] = "***"
    data["notify"]["urls"] = [masked_url(u.get_secret_value()) for u in settings.notify.urls]
    if settings.archive.postgres_url is not None:
        data["archive"]["postgres_url"] = redact_dsn(settings.archive.postgres_url.get_secret_value())
    for section, key in (
        ("redis", "url"),
        ("metrics", "pushgateway_url"),
        ("analyzer", "opencode_url"),
        ("analyzer", "base_url"),
    ):
        if data[section][key]:
            data[section][key] = redact_url(data[section][key])
    target = settings.redis.target()
    data["redis"]["topology"] = target.topology.value if target else "embedded"
    data["redis"]["effective_key_prefix"] = settings.redis.effective_key_prefix()
    if target is not None and target.nodes:
        data["redis"]["nodes"] = [f"{host}:{port}" for host, port in target.nodes]
    if target is not None and target.master_name:
        data["redis"]["master_name"] = target.master_name
    return data


def in_kubernetes(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process runs inside a Kubernetes pod."""
    env = os.environ if environ is None else environ
    return bool(env.get("KUBERNETES_SERVICE_HOST"))
