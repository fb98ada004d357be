"""The archive's schema: numbered migrations, and the columns the runner writes.

Every object lives in the PostgreSQL schema ``archive``. A migration is applied once, in order, in
the transaction that records it in ``archive.schema_migrations``; a migration, once released, is
never edited (a change is a new migration). ``TABLES`` is what this runner writes at ``LATEST``: the
typed columns of each table (what people query), the whole document beside them as JSONB.
``tests/integration/test_archive.py`` checks that the migrations create exactly these columns.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The PostgreSQL schema that holds every table of the archive.
SCHEMA = "archive"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


#: The tables of documents (one per stage) and of cycle summaries, with their indexes.
V1 = """
CREATE TABLE archive.signals (
    id            text PRIMARY KEY,
    symbol        text NOT NULL,
    minute        timestamptz NOT NULL,
    action        text,
    confidence    double precision,
    price         double precision,
    analyzer      text,
    model         text,
    latency_ms    integer,
    tokens_in     integer,
    tokens_out    integer,
    cost_usd      double precision,
    fencing_token bigint,
    cycle_id      text,
    instance_id   text,
    generated_at  timestamptz,
    stream_id     text,
    published_at  timestamptz NOT NULL,
    archived_at   timestamptz NOT NULL DEFAULT now(),
    doc           jsonb NOT NULL
);
CREATE INDEX signals_symbol_minute ON archive.signals (symbol, minute);
CREATE INDEX signals_minute ON archive.signals (minute);

CREATE TABLE archive.scores (
    id            text PRIMARY KEY,
    symbol        text NOT NULL,
    minute        timestamptz NOT NULL,
    score         integer,
    grade         text,
    analyzer      text,
    model         text,
    latency_ms    integer,
    tokens_in     integer,
    tokens_out    integer,
    cost_usd      double precision,
    fencing_token bigint,
    cycle_id      text,
    instance_id   text,
    generated_at  timestamptz,
    stream_id     text,
    published_at  timestamptz NOT NULL,
    archived_at   timestamptz NOT NULL DEFAULT now(),
    doc           jsonb NOT NULL
);
CREATE INDEX scores_symbol_minute ON archive.scores (symbol, minute);
CREATE INDEX scores_minute ON archive.scores (minute);

CREATE TABLE archive.advice (
    id                text PRIMARY KEY,
    symbol            text NOT NULL,
    minute            timestamptz NOT NULL,
    action            text,
    entry             double precision,
    stop_loss         double precision,
    take_profit       double precision,
    position_size_pct double precision,
    horizon_minutes   integer,
    analyzer          text,
    model             text,
    latency_ms        integer,
    tokens_in         integer,
    tokens_out        integer,
    cost_usd          double precision,
    fencing_token     bigint,
    cycle_id          text,
    instance_id       text,
    generated_at      timestamptz,
    stream_id         text,
    published_at      timestamptz NOT NULL,
    archived_at       timestamptz NOT NULL DEFAULT now(),
    doc               jsonb NOT NULL
);
CREATE INDEX advice_symbol_minute ON archive.advice (symbol, minute);
CREATE INDEX advice_minute ON archive.advice (minute);

CREATE TABLE archive.reports (
    id            text PRIMARY KEY,
    shard         text,
    minute        timestamptz NOT NULL,
    analyzer      text,
    model         text,
    latency_ms    integer,
    tokens_in     integer,
    tokens_out    integer,
    cost_usd      double precision,
    fencing_token bigint,
    cycle_id      text,
    instance_id   text,
    generated_at  timestamptz,
    stream_id     text,
    published_at  timestamptz NOT NULL,
    archived_at   timestamptz NOT NULL DEFAULT now(),
    doc           jsonb NOT NULL
);
CREATE INDEX reports_minute ON archive.reports (minute);

CREATE TABLE archive.outcomes (
    id              text PRIMARY KEY,
    signal_id       text NOT NULL,
    symbol          text NOT NULL,
    minute          timestamptz NOT NULL,
    horizon_minutes integer,
    matured_at      timestamptz,
    model           text,
    action          text,
    confidence      double precision,
    entry_price     double precision,
    exit_price      double precision,
    price_return    double precision,
    hit             boolean,
    stream_id       text,
    published_at    timestamptz NOT NULL,
    archived_at     timestamptz NOT NULL DEFAULT now(),
    doc             jsonb NOT NULL
);
CREATE INDEX outcomes_symbol_minute ON archive.outcomes (symbol, minute);
CREATE INDEX outcomes_matured_at ON archive.outcomes (matured_at);
CREATE INDEX outcomes_published_at ON archive.outcomes (published_at);
CREATE INDEX outcomes_signal_id ON archive.outcomes (signal_id);

CREATE TABLE archive.cycles (
    cycle_id     text PRIMARY KEY,
    instance_id  text,
    shard        text,
    status       text,
    skip_reason  text,
    exit_code    integer,
    started_at   timestamptz NOT NULL,
    minute       timestamptz,
    duration_ms  integer,
    signals      integer,
    scores       integer,
    advice       integer,
    report       text,
    archived_at  timestamptz NOT NULL DEFAULT now(),
    doc          jsonb NOT NULL
);
CREATE INDEX cycles_started_at ON archive.cycles (started_at);
"""

#: One row per decision: a signal with its score and advice (the specification's decision
#: history), for queries that want the whole chain of a symbol's minute at once.
V2 = """
CREATE VIEW archive.decisions AS
SELECT s.id, s.symbol, s.minute,
       s.action AS signal_action, s.confidence, s.price,
       c.score, c.grade,
       a.action AS advice_action, a.position_size_pct, a.entry, a.stop_loss, a.take_profit,
       a.horizon_minutes,
       s.model AS signal_model, c.model AS score_model, a.model AS advice_model,
       coalesce(s.cost_usd, 0) + coalesce(c.cost_usd, 0) + coalesce(a.cost_usd, 0) AS cost_usd,
       s.fencing_token, s.cycle_id, s.generated_at
FROM archive.signals s
LEFT JOIN archive.scores c ON c.id = s.id
LEFT JOIN archive.advice a ON a.id = s.id;
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "documents and cycle summaries", V1),
    Migration(2, "the decisions view", V2),
)

#: The schema version this runner writes; a database at another version is not written to.
LATEST = MIGRATIONS[-1].version

#: Creates the schema and the table of applied migrations (run by ``runner db migrate`` only).
BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS archive;
CREATE TABLE IF NOT EXISTS archive.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


@dataclass(frozen=True)
class Table:
    """A table the runner writes: its name, its key and its columns (name, SQL type)."""

    name: str
    key: str
    columns: tuple[tuple[str, str], ...]

    @property
    def names(self) -> list[str]:
        return [c for c, _ in self.columns]


_TEXT, _INT, _BIG, _FLOAT, _TIME, _BOOL, _JSON = (
    "text",
    "integer",
    "bigint",
    "double precision",
    "timestamptz",
    "boolean",
    "jsonb",
)
_PROVENANCE = (
    ("analyzer", _TEXT),
    ("model", _TEXT),
    ("latency_ms", _INT),
    ("tokens_in", _INT),
    ("tokens_out", _INT),
    ("cost_usd", _FLOAT),
    ("fencing_token", _BIG),
    ("cycle_id", _TEXT),
    ("instance_id", _TEXT),
    ("generated_at", _TIME),
)
_STREAMED = (("stream_id", _TEXT), ("published_at", _TIME), ("doc", _JSON))
_HEAD = (("id", _TEXT), ("symbol", _TEXT), ("minute", _TIME))

#: Stage -> the table its documents go to (``cycle``: the cycle summaries).
TABLES: dict[str, Table] = {
    "signal": Table(
        "signals",
        "id",
        (*_HEAD, ("action", _TEXT), ("confidence", _FLOAT), ("price", _FLOAT), *_PROVENANCE, *_STREAMED),
    ),
    "score": Table("scores", "id", (*_HEAD, ("score", _INT), ("grade", _TEXT), *_PROVENANCE, *_STREAMED)),
    "advice": Table(
        "advice",
        "id",
        (
            *_HEAD,
            ("action", _TEXT),
            ("entry", _FLOAT),
            ("stop_loss", _FLOAT),
            ("take_profit", _FLOAT),
            ("position_size_pct", _FLOAT),
            ("horizon_minutes", _INT),
            *_PROVENANCE,
            *_STREAMED,
        ),
    ),
    "report": Table(
        "reports", "id", (("id", _TEXT), ("shard", _TEXT), ("minute", _TIME), *_PROVENANCE, *_STREAMED)
    ),
    "outcome": Table(
        "outcomes",
        "id",
        (
            ("id", _TEXT),
            ("signal_id", _TEXT),
            ("symbol", _TEXT),
            ("minute", _TIME),
            ("horizon_minutes", _INT),
            ("matured_at", _TIME),
            ("model", _TEXT),
            ("action", _TEXT),
            ("confidence", _FLOAT),
            ("entry_price", _FLOAT),
            ("exit_price", _FLOAT),
            ("price_return", _FLOAT),
            ("hit", _BOOL),
            *_STREAMED,
        ),
    ),
    "cycle": Table(
        "cycles",
        "cycle_id",
        (
            ("cycle_id", _TEXT),
            ("instance_id", _TEXT),
            ("shard", _TEXT),
            ("status", _TEXT),
            ("skip_reason", _TEXT),
            ("exit_code", _INT),
            ("started_at", _TIME),
            ("minute", _TIME),
            ("duration_ms", _INT),
            ("signals", _INT),
            ("scores", _INT),
            ("advice", _INT),
            ("report", _TEXT),
            ("doc", _JSON),
        ),
    ),
}


def write_statement() -> str:
    """The one statement that writes a batch (``%(batch)s``: JSON, stage -> rows) and returns the
    schema version found and the rows inserted per stage. Nothing is written unless the schema is
    at ``LATEST``, and a row whose key is already there is left as it is, so a batch sent twice
    adds nothing the second time."""
    parts = [
        "WITH batch AS (SELECT %(batch)s::jsonb AS j),",
        "found AS (SELECT coalesce(max(version), 0) AS version FROM archive.schema_migrations),",
        f"ok AS (SELECT version = {LATEST} AS writable FROM found)",
    ]
    for stage, table in TABLES.items():
        names = ", ".join(table.names)
        types = ", ".join(f"{c} {t}" for c, t in table.columns)
        parts.append(
            f", ins_{stage} AS (INSERT INTO {SCHEMA}.{table.name} ({names}) "
            f"SELECT {names} FROM batch, ok, jsonb_to_recordset(coalesce(batch.j -> '{stage}', '[]')) "
            f"AS r({types}) WHERE ok.writable ON CONFLICT DO NOTHING RETURNING 1)"
        )
    counts = ", ".join(f"(SELECT count(*) FROM ins_{stage}) AS {stage}" for stage in TABLES)
    parts.append(f"SELECT (SELECT version FROM found) AS version, {counts}")
    return "\n".join(parts)
