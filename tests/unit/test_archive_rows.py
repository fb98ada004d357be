"""From stream entries and cycle summaries to the archive's rows, the history cursor, and the
scorecard's totals from archived outcomes (pure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from runner.archive import rows
from runner.archive.schema import LATEST, TABLES, write_statement
from runner.errors import ConfigError
from runner.outcomes import calibration, summaries
from runner.outcomes import rows as scorecard_rows

SIGNAL = {
    "id": "ETH/USD:2026-11-23T14:05",
    "symbol": "ETH/USD",
    "action": "BUY",
    "confidence": 0.72,
    "reasoning": "trend up",
    "price": 3120.5,
    "generated_at": "2026-11-23T14:05:41.203Z",
    "cycle_id": "20261123T140541100Z-abcdef",
    "instance_id": "pod-1",
    "analyzer": "openai",
    "model": "gpt",
    "latency_ms": 2310,
    "fencing_token": 4711,
    "cost_usd": 0.0012,
    "schema_version": 1,
}
ENTRY = "1795961141300-0"


def entry(doc: Any, field: str = "signal", entry_id: str = ENTRY) -> tuple[str, dict[str, str]]:
    return entry_id, {"symbol": "ETH/USD", field: json.dumps(doc) if not isinstance(doc, str) else doc}


def test_a_signal_becomes_a_row_with_typed_columns_and_the_whole_document() -> None:
    batch = rows.build_batch({"signal": [entry(SIGNAL)]}, [])

    (row,) = batch.rows["signal"]
    assert set(row) == set(TABLES["signal"].names)
    assert row["minute"] == "2026-11-23T14:05:00+00:00"
    assert (row["action"], row["confidence"], row["price"]) == ("BUY", 0.72, 3120.5)
    assert (row["fencing_token"], row["latency_ms"], row["cost_usd"]) == (4711, 2310, 0.0012)
    assert row["generated_at"] == "2026-11-23T14:05:41.203000+00:00"
    assert row["stream_id"] == ENTRY
    assert row["published_at"] == rows.entry_time(ENTRY).isoformat()
    assert row["doc"] == SIGNAL


def test_every_stage_fills_exactly_its_table_columns() -> None:
    docs = {
        "score": {"id": SIGNAL["id"], "symbol": "ETH/USD", "score": 61, "grade": "B", "model": "s"},
        "advice": {"id": SIGNAL["id"], "symbol": "ETH/USD", "action": "BUY", "entry": 1.0, "stop_loss": 0.9},
        "report": {"id": "report:2026-11-23T14:05:0-1", "shard": "0/1", "minute": "2026-11-23T14:05"},
        "outcome": {"id": f"{SIGNAL['id']}:15m", "signal_id": SIGNAL["id"], "symbol": "ETH/USD", "hit": True,
                    "horizon_minutes": 15, "return": 0.002, "confidence": 0.7, "action": "BUY", "model": "m"},
    }  # fmt: skip

    batch = rows.build_batch({stage: [entry(doc, "doc")] for stage, doc in docs.items()}, [])

    for stage in docs:
        (row,) = batch.rows[stage]
        assert set(row) == set(TABLES[stage].names), stage
    outcome = batch.rows["outcome"][0]
    assert outcome["minute"] == "2026-11-23T14:05:00+00:00"
    assert outcome["matured_at"] == "2026-11-23T14:20:00+00:00"
    assert (outcome["price_return"], outcome["hit"]) == (0.002, True)
    assert batch.rows["report"][0]["minute"] == "2026-11-23T14:05:00+00:00"


def test_a_value_of_the_wrong_type_is_null_and_the_document_is_kept() -> None:
    odd = {**SIGNAL, "confidence": "high", "latency_ms": 1.5, "fencing_token": True, "generated_at": "soon"}

    (row,) = rows.build_batch({"signal": [entry(odd)]}, []).rows["signal"]

    assert (row["confidence"], row["latency_ms"], row["fencing_token"], row["generated_at"]) == (None,) * 4
    assert row["doc"]["confidence"] == "high"


def test_nul_characters_and_non_finite_numbers_never_reach_postgresql() -> None:
    odd = {**SIGNAL, "reasoning": "a\x00b", "price": float("nan"), "x\x00": [float("inf")]}

    batch = rows.build_batch({"signal": [entry(odd)]}, [])

    (row,) = batch.rows["signal"]
    assert row["doc"]["reasoning"] == "a\ufffdb"
    assert row["price"] is None
    assert row["doc"]["x\ufffd"] == [None]
    json.loads(batch.payload())  # strict JSON: no NaN


def test_entries_without_a_readable_document_are_left_out_and_counted() -> None:
    batch = rows.build_batch(
        {"signal": [entry("not json"), entry([1, 2]), entry({"symbol": "ETH/USD"}), entry(SIGNAL)]},
        ["garbage", json.dumps({"cycle_id": "x"})],
    )

    assert [r["id"] for r in batch.rows["signal"]] == [SIGNAL["id"]]
    assert batch.unreadable == 5
    assert "cycle" not in batch.rows


def test_a_document_in_two_entries_is_sent_once() -> None:
    batch = rows.build_batch({"signal": [entry(SIGNAL), entry(SIGNAL, entry_id="1795961141301-0")]}, [])

    assert [r["stream_id"] for r in batch.rows["signal"]] == [ENTRY]
    assert batch.count() == 1


def test_a_cycle_summary_becomes_a_row() -> None:
    summary = {
        "cycle_id": "20261123T140541100Z-abcdef",
        "instance_id": "pod-1",
        "shard": "0/1",
        "status": "partial",
        "skip_reason": None,
        "exit_code": 1,
        "started_at": "2026-11-23T14:05:41.100Z",
        "scheduled_minute": "2026-11-23T14:05",
        "duration_ms": 5012,
        "signals": 19,
        "scores": 19,
        "advice": 18,
        "report": "report:2026-11-23T14:05:0-1",
        "results": [],
    }

    (row,) = rows.build_batch({}, [json.dumps(summary)]).rows["cycle"]

    assert set(row) == set(TABLES["cycle"].names)
    assert (row["status"], row["exit_code"], row["signals"], row["advice"]) == ("partial", 1, 19, 18)
    assert row["minute"] == "2026-11-23T14:05:00+00:00"
    assert row["doc"] == summary


def test_the_history_floor_lies_a_window_before_the_newest_cycle_archived() -> None:
    ids = ["20261123T140541100Z-abcdef", "20261123T140641250Z-012345", "garbage"]

    floor = rows.history_floor(ids, 95)

    assert floor == "20261123T140506250"
    assert floor < "20261123T140541100Z-abcdef"  # a cycle that started within the window is read again
    assert floor > "20261123T140500000Z-abcdef"
    assert rows.history_floor(["garbage"], 95) is None
    assert rows.cycle_time(ids[1]) == datetime(2026, 11, 23, 14, 6, 41, 250_000, tzinfo=UTC)


def test_entry_ids_compare_as_numbers_not_as_text() -> None:
    assert rows.id_key("999-5") < rows.id_key("1000-0") < rows.id_key("1000-1")
    assert (
        rows.id_moment("1795961141300-0") == f"{datetime.fromtimestamp(1795961141.3, UTC):%Y-%m-%d %H:%M:%S}Z"
    )
    assert rows.id_moment("20261123T140541100Z-abcdef") == "2026-11-23 14:05:41Z"
    assert rows.id_moment(None) == "?"


def test_since_takes_hours_days_weeks_or_all() -> None:
    assert rows.parse_age("12h") == timedelta(hours=12)
    assert rows.parse_age("7d") == timedelta(days=7)
    assert rows.parse_age("2W") == timedelta(weeks=2)
    assert rows.parse_age("all") is None
    for bad in ("0d", "7", "d7", "1y", ""):
        with pytest.raises(ConfigError, match="--since"):
            rows.parse_age(bad)


def test_the_write_checks_the_version_and_inserts_every_table_idempotently() -> None:
    sql = write_statement()

    assert f"version = {LATEST} AS writable" in sql
    for table in TABLES.values():
        assert f"INSERT INTO archive.{table.name} (" in sql
    assert sql.count("ON CONFLICT DO NOTHING") == len(TABLES)
    assert sql.count("WHERE ok.writable") == len(TABLES)


def test_archived_aggregates_give_the_same_scorecard_as_the_redis_totals() -> None:
    # Two BUYs (one hit) and a SELL that missed, at 5 minutes, with their cost; one signal unscored.
    found = {
        "rows": [
            ("ETH/USD", "m", "BUY", 5, 2, 1, 0.004, 0.004, (0.8 - 1) ** 2 + (0.6 - 0) ** 2, 0.02),
            ("ETH/USD", "m", "SELL", 5, 1, 0, -0.001, 0.001, 0.5**2, 0),
        ],
        "calibration": [
            ("ETH/USD", "m", 5, 8, 1, 1),
            ("ETH/USD", "m", 5, 6, 1, 0),
            ("ETH/USD", "m", 5, 5, 1, 0),
        ],
        "unscored": [("ETH/USD", "m", "BUY", 5, 1)],
        "days": [("ETH/USD", "m", 2)],
    }
    redis_totals = {
        "ETH/USD|m|BUY|5|count": 2.0,
        "ETH/USD|m|BUY|5|hits": 1.0,
        "ETH/USD|m|BUY|5|return": 0.004,
        "ETH/USD|m|BUY|5|hold_return": 0.004,
        "ETH/USD|m|BUY|5|brier": 0.04 + 0.36,
        "ETH/USD|m|BUY|5|cost": 0.02,
        "ETH/USD|m|BUY|5|unscored": 1.0,
        "ETH/USD|m|SELL|5|count": 1.0,
        "ETH/USD|m|SELL|5|hits": 0.0,
        "ETH/USD|m|SELL|5|return": -0.001,
        "ETH/USD|m|SELL|5|hold_return": 0.001,
        "ETH/USD|m|SELL|5|brier": 0.25,
        "cal|ETH/USD|m|5|8|count": 1.0,
        "cal|ETH/USD|m|5|8|hits": 1.0,
        "cal|ETH/USD|m|5|6|count": 1.0,
        "cal|ETH/USD|m|5|6|hits": 0.0,
        "cal|ETH/USD|m|5|5|count": 1.0,
        "cal|ETH/USD|m|5|5|hits": 0.0,
    }

    totals, days = rows.scorecard_totals(found)

    assert rounded(scorecard_rows(totals)) == rounded(scorecard_rows(redis_totals))
    assert rounded(summaries(totals, days)) == rounded(summaries(redis_totals, {("ETH/USD", "m"): 2}))
    assert calibration(totals) == calibration(redis_totals)


def rounded(items: list[Any]) -> list[dict[str, Any]]:
    """Dataclass rows with their floats rounded (sums in another order differ in the last bit)."""
    return [{k: round(v, 12) if isinstance(v, float) else v for k, v in i.as_dict().items()} for i in items]
