"""Every byte the runner sends to PostgreSQL: the cycle's write, ``runner db migrate`` and
``status``, and the reads of ``runner history`` and ``runner scorecard``.

The driver is psycopg 3's asyncio API, imported only here and only when the archive is used. One
connection per job; every call is bounded: on a timeout the connection is dropped at once (psycopg
would otherwise spend up to 10 s asking the server to cancel, which a frozen server never
answers), and the server rolls back what it had not committed. Errors are translated where they
enter (``ArchiveUnavailable``, ``ArchiveRefused``), and no message carries the URL's password.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from runner.archive.schema import BOOTSTRAP, LATEST, MIGRATIONS, SCHEMA, TABLES, write_statement
from runner.config import redact_dsn
from runner.errors import ArchiveError, ArchiveRefused, ArchiveUnavailable, one_line
from runner.redact import dsn_secrets

if TYPE_CHECKING:
    from psycopg import AsyncConnection

T = TypeVar("T")

APPLICATION_NAME = "autonomous-runner"
#: Any constant shared by every runner: ``runner db migrate`` runs one at a time.
MIGRATION_LOCK = 7_262_120_921
#: What the role that writes needs, said wherever it is missing.
GRANTS_HINT = "see 'The archive in PostgreSQL' in the README for the grants"

_WRITE = write_statement()


def refusal(version: int | None) -> str:
    """Why this runner does not write to an archive at ``version`` (None: no schema at all)."""
    if not version:
        return "the archive has no schema yet: run `runner db migrate`"
    if version < LATEST:
        return (
            f"the archive's schema is at version {version} and this runner writes version {LATEST}: "
            "run `runner db migrate`"
        )
    return (
        f"the archive's schema is at version {version}, newer than this runner knows ({LATEST}): "
        "upgrade the runner"
    )


@dataclass
class Session:
    """One connection to the archive."""

    conn: AsyncConnection[Any]
    url: str
    secrets: list[str] = field(default_factory=list)

    def scrub(self, text: str) -> str:
        """``text`` without the URL or its password."""
        for secret in sorted({self.url, *self.secrets}, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def translate(self, exc: BaseException, what: str) -> ArchiveError:
        """A driver error as the runner's own, in one line without secrets."""
        import psycopg
        from psycopg import errors as pe

        text = self.scrub(one_line(exc))
        if isinstance(exc, pe.InsufficientPrivilege):
            return ArchiveRefused(f"PostgreSQL refused {what}: {text} ({GRANTS_HINT})")
        if isinstance(exc, pe.UndefinedTable | pe.UndefinedColumn | pe.InvalidSchemaName):
            return ArchiveRefused(f"PostgreSQL refused {what}: {text}")
        if isinstance(exc, psycopg.OperationalError):
            return ArchiveUnavailable(f"PostgreSQL unavailable during {what}: {text}")
        return ArchiveUnavailable(f"PostgreSQL refused {what}: {text}")

    async def bounded(self, make: Callable[[], Awaitable[T]], seconds: float, what: str) -> T:
        """Run ``make()`` for at most ``seconds``; on a timeout, drop the connection first so that
        psycopg does not try to cancel the query on a server that may never answer."""
        import psycopg

        task = asyncio.ensure_future(make())
        try:
            return await asyncio.wait_for(asyncio.shield(task), max(seconds, 0.01))
        except TimeoutError:
            self.abandon(task)
            raise ArchiveUnavailable(
                f"PostgreSQL did not finish {what} within {seconds:.1f} s", timeout=True
            ) from None
        except asyncio.CancelledError:
            self.abandon(task)
            raise
        except psycopg.Error as exc:
            raise self.translate(exc, what) from exc

    def abandon(self, task: asyncio.Future[Any]) -> None:
        self.conn.pgconn.finish()
        task.cancel()
        task.add_done_callback(_consume)

    async def fetch(
        self, query: str, params: Mapping[str, Any] | None, seconds: float, what: str
    ) -> list[tuple[Any, ...]]:
        """The rows ``query`` returns (one round trip)."""

        async def go() -> list[tuple[Any, ...]]:
            cur = await self.conn.execute(query, params)
            return await cur.fetchall() if cur.description else []

        return await self.bounded(go, seconds, what)

    async def version(self, seconds: float) -> int | None:
        """The schema version the archive is at; None when it has no schema."""
        found = await self.fetch(
            f"SELECT to_regclass('{SCHEMA}.schema_migrations') IS NOT NULL", None, seconds, "a read"
        )
        if not found or not found[0][0]:
            return None
        rows = await self.fetch(
            f"SELECT coalesce(max(version), 0) FROM {SCHEMA}.schema_migrations", None, seconds, "a read"
        )
        return int(rows[0][0]) if rows else None


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not report it as never retrieved


@contextlib.asynccontextmanager
async def session(url: str, seconds: float) -> AsyncIterator[Session]:
    """A connection to ``url`` made within ``seconds``, closed on the way out."""
    import psycopg

    secrets = dsn_secrets(url)
    where = redact_dsn(url)
    for secret in secrets:
        where = where.replace(secret, "***")
    try:
        conn = await asyncio.wait_for(
            psycopg.AsyncConnection.connect(url, autocommit=True, application_name=APPLICATION_NAME),
            max(seconds, 0.01),
        )
    except TimeoutError:
        raise ArchiveUnavailable(
            f"PostgreSQL at {where} did not answer within {seconds:.1f} s", timeout=True
        ) from None
    except psycopg.Error as exc:
        text = one_line(exc)
        for secret in sorted({url, *secrets}, key=len, reverse=True):
            text = text.replace(secret, "***")
        raise ArchiveUnavailable(f"PostgreSQL at {where} unavailable: {text}") from exc
    s = Session(conn, url, secrets)
    try:
        yield s
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 1.0)


class Clock:
    """Seconds left of a job's time, for each of its round trips."""

    def __init__(self, seconds: float) -> None:
        self.until = asyncio.get_running_loop().time() + seconds

    def left(self) -> float:
        return max(0.01, self.until - asyncio.get_running_loop().time())


# The cycle's write ------------------------------------------------------------------------------


async def write(url: str, payload: str, seconds: float) -> dict[str, int]:
    """Write a batch (``rows.Batch.payload()``) in one statement; returns the rows inserted per
    stage (a document already archived counts 0). Raises ``ArchiveRefused`` when the schema is
    not this runner's, ``ArchiveUnavailable`` when PostgreSQL is down or slow."""
    clock = Clock(seconds)
    async with session(url, clock.left()) as s:
        try:
            rows = await s.fetch(_WRITE, {"batch": payload}, clock.left(), "the archive write")
        except ArchiveRefused as exc:
            if "permission denied" in str(exc):
                raise
            # A table or column this runner expects is not there: say which version is.
            raise ArchiveRefused(refusal(await s.version(clock.left()))) from exc
    version, *counts = rows[0]
    if version != LATEST:
        raise ArchiveRefused(refusal(int(version)))
    return {stage: int(n) for stage, n in zip(TABLES, counts, strict=True)}


# runner db migrate / status ---------------------------------------------------------------------


@dataclass(frozen=True)
class Migrated:
    before: int
    after: int
    applied: list[int]


async def migrate(url: str, seconds: float) -> Migrated:
    """Create the schema or bring it to ``LATEST``, in one transaction (idempotent). Refuses an
    archive newer than this runner knows."""
    clock = Clock(seconds)
    async with session(url, clock.left()) as s:

        async def go() -> Migrated:
            async with s.conn.transaction():
                await s.conn.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
                await s.conn.execute(BOOTSTRAP)
                cur = await s.conn.execute(
                    f"SELECT coalesce(max(version), 0) FROM {SCHEMA}.schema_migrations"
                )
                row = await cur.fetchone()
                before = int(row[0]) if row else 0
                if before > LATEST:
                    raise ArchiveRefused(refusal(before))
                applied = []
                for m in MIGRATIONS:
                    if m.version <= before:
                        continue
                    await s.conn.execute(m.sql)
                    await s.conn.execute(
                        f"INSERT INTO {SCHEMA}.schema_migrations (version, name) VALUES (%s, %s)",
                        (m.version, m.name),
                    )
                    applied.append(m.version)
            return Migrated(before, max([before, *applied]), applied)

        return await s.bounded(go, clock.left(), "the migration")


async def describe(url: str, seconds: float) -> dict[str, Any]:
    """What ``runner db status`` shows: the version, the migrations applied, this role's grants on
    each table, and whether this runner can write (``problems`` says why not)."""
    clock = Clock(seconds)
    async with session(url, clock.left()) as s:
        ((role, database, has_schema, usage),) = await s.fetch(
            f"""SELECT current_user, current_database(), n.oid IS NOT NULL,
                       coalesce(has_schema_privilege(n.oid, 'USAGE'), false)
                FROM (SELECT 1) AS one LEFT JOIN pg_namespace n ON n.nspname = '{SCHEMA}'""",
            None,
            clock.left(),
            "a read",
        )
        tables = await s.fetch(
            f"""SELECT c.relname, has_table_privilege(c.oid, 'INSERT'), has_table_privilege(c.oid, 'SELECT'),
                       CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint END
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = '{SCHEMA}' AND c.relkind IN ('r', 'v', 'p') ORDER BY c.relname""",
            None,
            clock.left(),
            "a read",
        )
        has_migrations = any(t[0] == "schema_migrations" for t in tables)
        readable = has_migrations and usage and any(t[0] == "schema_migrations" and t[2] for t in tables)
        migrations: list[tuple[Any, ...]] = []
        if readable:
            migrations = await s.fetch(
                f"SELECT version, name, applied_at FROM {SCHEMA}.schema_migrations ORDER BY version",
                None,
                clock.left(),
                "a read",
            )
    version = max((int(m[0]) for m in migrations), default=0) if readable else None
    grants = {
        # The planner's estimate (None until the table was first analyzed): counting is too slow.
        str(t[0]): {
            "insert": bool(t[1]),
            "select": bool(t[2]),
            "rows_estimate": int(t[3]) if t[3] is not None else None,
        }
        for t in tables
    }
    problems = []
    if not has_schema or not has_migrations:
        problems.append(refusal(None))
    elif not usage:
        problems.append(f"role {role} has no USAGE on schema {SCHEMA} ({GRANTS_HINT})")
    elif not readable:
        problems.append(f"role {role} cannot SELECT {SCHEMA}.schema_migrations ({GRANTS_HINT})")
    elif version != LATEST:
        problems.append(refusal(version))
    else:
        for table in (t.name for t in TABLES.values()):
            if table not in grants:
                problems.append(f"table {SCHEMA}.{table} is missing: run `runner db migrate`")
            elif not grants[table]["insert"]:
                problems.append(f"role {role} cannot INSERT into {SCHEMA}.{table} ({GRANTS_HINT})")
    return {
        "database": database,
        "role": role,
        "version": version,
        "latest": LATEST,
        "writable": not problems,
        "problems": problems,
        "migrations": [
            {"version": int(m[0]), "name": m[1], "applied_at": m[2].isoformat()} for m in migrations
        ],
        "tables": grants,
    }


# runner history ---------------------------------------------------------------------------------


async def history(
    url: str,
    stages: Sequence[str],
    *,
    symbol: str | None,
    since: datetime | None,
    limit: int,
    seconds: float,
) -> list[dict[str, Any]]:
    """The newest ``limit`` archived documents of ``stages``, newest first (reports have no
    symbol: a symbol filter leaves them out)."""
    params: dict[str, Any] = {"limit": limit, "symbol": symbol, "since": since}
    parts = []
    for stage in stages:
        if stage == "report" and symbol is not None:
            continue
        where = []
        if symbol is not None:
            where.append("symbol = %(symbol)s")
        if since is not None:
            where.append("minute >= %(since)s")
        cond = f"WHERE {' AND '.join(where)}" if where else ""
        sym = "NULL::text" if stage == "report" else "symbol"
        parts.append(
            f"(SELECT '{stage}'::text AS stage, id, {sym} AS symbol, minute, published_at, doc "
            f"FROM {SCHEMA}.{TABLES[stage].name} {cond} ORDER BY minute DESC, published_at DESC "
            "LIMIT %(limit)s)"
        )
    if not parts:
        return []
    query = (
        f"SELECT * FROM ({' UNION ALL '.join(parts)}) AS d "
        "ORDER BY minute DESC, published_at DESC, stage LIMIT %(limit)s"
    )
    clock = Clock(seconds)
    async with session(url, clock.left()) as s:
        rows = await s.fetch(query, params, clock.left(), "the history read")
    return [
        {
            "stage": r[0],
            "id": r[1],
            "symbol": r[2],
            "minute": r[3].isoformat(),
            "published_at": r[4].isoformat(),
            "doc": r[5],
        }
        for r in rows
    ]


# runner scorecard -------------------------------------------------------------------------------

_SCORED = "o.hit IS NOT NULL AND o.price_return IS NOT NULL AND o.confidence IS NOT NULL"
_SINCE = "(%(since)s::timestamptz IS NULL OR {col} >= %(since)s::timestamptz)"
_UNSCORED = f"""
    SELECT s.symbol, replace(coalesce(nullif(s.model, ''), s.analyzer, ''), '|', '/') AS model, s.action,
           h.h AS horizon, s.minute + h.h * interval '1 minute' AS matured_at
    FROM {SCHEMA}.signals s CROSS JOIN unnest(%(horizons)s::int[]) AS h(h)
    WHERE s.minute + h.h * interval '1 minute' < %(scorable_from)s::timestamptz
      AND {_SINCE.format(col="s.minute + h.h * interval '1 minute'")}
      AND NOT EXISTS (SELECT 1 FROM {SCHEMA}.outcomes o WHERE o.id = s.id || ':' || h.h || 'm')"""
SCORECARD = {
    "rows": f"""
        SELECT o.symbol, o.model, o.action, o.horizon_minutes, count(*), count(*) FILTER (WHERE o.hit),
               sum(CASE o.action WHEN 'BUY' THEN o.price_return WHEN 'SELL' THEN -o.price_return ELSE 0 END),
               sum(o.price_return),
               sum((o.confidence - CASE WHEN o.hit THEN 1 ELSE 0 END) ^ 2),
               sum(coalesce(s.cost_usd, 0))
        FROM {SCHEMA}.outcomes o LEFT JOIN {SCHEMA}.signals s ON s.id = o.signal_id
        WHERE {_SCORED} AND {_SINCE.format(col="o.published_at")}
        GROUP BY 1, 2, 3, 4""",
    "calibration": f"""
        SELECT o.symbol, o.model, o.horizon_minutes, least(9, floor(o.confidence * 10))::int, count(*),
               count(*) FILTER (WHERE o.hit)
        FROM {SCHEMA}.outcomes o
        WHERE {_SCORED} AND {_SINCE.format(col="o.published_at")}
        GROUP BY 1, 2, 3, 4""",
    "unscored": f"SELECT symbol, model, action, horizon, count(*) FROM ({_UNSCORED}) u GROUP BY 1, 2, 3, 4",
    "days": f"""
        SELECT symbol, model, count(DISTINCT (at AT TIME ZONE 'UTC')::date) FROM (
            SELECT o.symbol, o.model, o.published_at FROM {SCHEMA}.outcomes o
            WHERE {_SCORED} AND {_SINCE.format(col="o.published_at")}
            UNION ALL SELECT symbol, model, matured_at FROM ({_UNSCORED}) u
        ) d (symbol, model, at) GROUP BY 1, 2""",
}


async def scorecard(
    url: str, *, since: datetime | None, scorable_from: datetime, horizons: Sequence[int], seconds: float
) -> dict[str, list[tuple[Any, ...]]]:
    """The archived outcomes aggregated per symbol, model, action and horizon (``rows``), per
    confidence decile (``calibration``), the signals never scored (``unscored``: no outcome at a
    horizon that ended before ``scorable_from``) and the days holding either (``days``). An
    outcome belongs to the day it was scored (its publication), as in the totals Redis keeps."""
    params = {"since": since, "scorable_from": scorable_from, "horizons": list(horizons)}
    clock = Clock(seconds)
    out: dict[str, list[tuple[Any, ...]]] = {}
    async with session(url, clock.left()) as s:
        for name, query in SCORECARD.items():
            out[name] = await s.fetch(query, params, clock.left(), "the scorecard read")
    return out
