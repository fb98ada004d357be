"""Errors the runner raises, and the exit codes they become.

The tree::

    RunnerError
     ├── ConfigError            bad settings, flags or environment        -> exit 2
     ├── DependencyError        a dependency the whole cycle needs is down -> exit 3
     │    ├── RedisUnavailable  Redis refused, timed out or answered nonsense
     │    │    ├── TopologyChanged   the master moved or is gone (READONLY, NOREPLICAS,
     │    │    │                     MASTERDOWN, CLUSTERDOWN, no master, connection refused)
     │    │    └── RedisRefused      Redis refuses what every cycle needs: it is out of memory
     │    │                          (OOM), or the ACL user lacks a command, key or channel (NOPERM)
     │    └── ArchiveError      the PostgreSQL archive could not be used (never a cycle's failure)
     │         ├── ArchiveUnavailable  down, slow, or refused the connection or the statement
     │         └── ArchiveRefused      its schema or grants do not let this runner write
     └── AnalyzerError          one analysis went wrong (one symbol's result)
          ├── TransientError    worth retrying: timeouts, 5xx, resets
          │    └── RateLimited  429 / 503 with an optional Retry-After
          ├── PermanentError    retrying cannot help: 400, 403, unknown symbol
          │    └── AuthError    401 / 402: every call will fail, so the cycle fails fast
          └── InvalidOutput     the answer did not validate (code ``invalid_output``)

Errors are translated where they enter the program (the Redis client wrapper, each analyzer),
so the cycle only ever sees these types. Each analyzer error carries a ``Code``: metrics, the
breaker and auto-pause read codes, never message text.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


def one_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type when it has none), shortened."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


class Code(StrEnum):
    """Why a symbol ended as it did: the machine-readable twin of its human ``reason``.

    The values are the ``reason`` labels of ``signal_generation_skipped_total``.
    """

    OK = "ok"
    #: Published by an earlier run of the same minute: nothing new to publish.
    DUPLICATE = "duplicate"
    #: An unexpected error (a bug in an analyzer).
    ERROR = "error"
    TRANSIENT = "transient"
    RATE_LIMITED = "rate_limited"
    PERMANENT = "permanent"
    AUTH = "auth"
    INVALID_OUTPUT = "invalid_output"
    UNKNOWN_SYMBOL = "unknown_symbol"
    #: Redis failed during the symbol's work (the rate limit, say).
    REDIS = "redis"
    #: One attempt ran out of its time.
    TIMEOUT = "timeout"
    #: The cycle's deadline came first (not started, or cut off).
    DEADLINE = "deadline"
    #: SIGTERM: not started, or cut off when the grace period ran out.
    SHUTDOWN = "shutdown"
    BUDGET = "budget"
    BREAKER_OPEN = "breaker_open"
    BREAKER_HALF_OPEN = "breaker_half_open"
    #: An earlier symbol's credentials were refused: every call would fail the same way.
    AUTH_FAILED = "auth_failed"
    LOCKED = "locked"
    PAUSED = "paused"
    #: The run lost the symbol's lock before publishing.
    FENCED = "fenced"
    #: Redis did not take the publish.
    PUBLISH_FAILED = "publish_failed"
    #: Published on the master, but no replica confirmed it before the cycle's time ran out (or
    #: it was gone from the master by then): a failover may lose it.
    UNCONFIRMED = "unconfirmed"


class ExitCode(IntEnum):
    """Process exit codes, as the design contract defines them."""

    OK = 0
    PARTIAL = 1
    USAGE = 2
    FAILED = 3


class RunnerError(Exception):
    """Base of every error the runner raises on purpose."""


class ConfigError(RunnerError):
    """Settings, flags or environment that cannot be used; the message is one line."""


class DependencyError(RunnerError):
    """A dependency the whole cycle needs is unavailable."""


class RedisUnavailable(DependencyError):
    """Redis could not be reached in time, or answered something unusable."""


class ArchiveError(DependencyError):
    """The PostgreSQL archive could not be used. A cycle turns it into a warning; commands that
    read the archive exit 3 with it."""


class ArchiveUnavailable(ArchiveError):
    """PostgreSQL is down, did not answer in time (``timeout``), or refused the connection or
    the statement."""

    def __init__(self, message: str, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class ArchiveRefused(ArchiveError):
    """The archive's schema is missing, older or newer than this runner's, or the role lacks a
    grant: writing waits until an operator acts (the documents stay in Redis meanwhile)."""


class TopologyChanged(RedisUnavailable):
    """The node the run talks to is no longer a master that may write, or there is none (a
    failover, a demotion, a lost quorum): the cycle ends, and the next run rediscovers."""


class RedisRefused(RedisUnavailable):
    """Redis answers, but refuses a write every cycle needs: it is out of memory (``maxmemory``
    reached and nothing it may evict), or the ACL user may not run a command (or not on the
    runner's keys or channels). The cycle ends at once, as every later step would be refused
    too; what it holds is released (deleting needs neither memory nor much permission)."""


def ends_cycle(exc: BaseException) -> bool:
    """Whether ``exc`` ends the cycle at once: the master moved or is gone, or Redis refuses what
    every later step needs too (out of memory, no permission)."""
    return isinstance(exc, TopologyChanged | RedisRefused)


class AnalyzerError(RunnerError):
    """One analysis failed. ``code`` is the machine-readable cause."""

    code = Code.ERROR
    #: Whether this failure says something about the analyzer service as a whole (an outage),
    #: and so counts toward the circuit breaker.
    outage = False
    #: Whether this failure belongs to the symbol itself, and so counts toward pausing it.
    symbol_fault = False


class TransientError(AnalyzerError):
    """A failure worth retrying: timeout, connection reset, 5xx (``retry_after`` if the server
    said when to come back)."""

    code = Code.TRANSIENT
    outage = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(TransientError):
    """The analyzer (or the shared rate limit) asked us to slow down; not an outage."""

    code = Code.RATE_LIMITED
    outage = False


class PermanentError(AnalyzerError):
    """A failure that retrying cannot fix (bad request, forbidden, unknown symbol)."""

    code = Code.PERMANENT


class AuthError(PermanentError):
    """Credentials refused or money exhausted: every call will fail the same way."""

    code = Code.AUTH


class InvalidOutput(AnalyzerError):
    """The analyzer answered, but the answer did not validate."""

    code = Code.INVALID_OUTPUT
    symbol_fault = True


class UnknownSymbol(PermanentError):
    """The market source or analyzer does not know this symbol."""

    code = Code.UNKNOWN_SYMBOL
    symbol_fault = True
