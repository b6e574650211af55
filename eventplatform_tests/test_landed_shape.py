"""The landed shape of an event (Arrow/Parquet) and ClickHouse access agree with each other."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pytest

from eventplatform.clickhouse import ClickHouse, split_statements
from eventplatform.events import EventCodec, EventValidator
from eventplatform.events.arrow import events_to_arrow, landed_schema, with_platform_fields
from eventplatform.events.examples import EXAMPLES, example_event
from eventplatform.settings import REPO_ROOT

SQL_DIR = REPO_ROOT / "sql" / "clickhouse"


def decoded_examples() -> list[dict]:
    codec, validator = EventCodec(), EventValidator()
    return [
        codec.decode(codec.encode(validator.validate(example_event(t), "cust-a", 1795428000123)[0]))
        for t in EXAMPLES
    ]


def test_events_flatten_to_one_wide_row_each() -> None:
    events = decoded_examples()
    table = events_to_arrow(events, "events.raw", 3, list(range(100, 100 + len(events))), 5000)
    assert table.schema == landed_schema()
    rows = {r["event_type"]: r for r in table.to_pylist()}
    assert rows["purchase"]["amount"] == 59.9 and rows["purchase"]["campaign_id"] is None
    assert rows["impression"]["cost"] == 0.0025 and rows["impression"]["url"] is None
    assert rows["bid"]["won"] is True
    assert rows["page_view"]["kafka_partition"] == 3
    assert [r["kafka_offset"] for r in table.to_pylist()] == list(range(100, 108))
    assert table.column("event_ts").type == pa.timestamp("ms", tz="UTC")


def test_a_contract_field_named_like_a_platform_column_is_refused() -> None:
    """A payload field called ``event_bytes`` or ``is_bot`` would share a column's name with
    the platform's own value: the landed shape refuses to be built."""
    sent = list(landed_schema())[:5]
    assert len(set(landed_schema().names)) == len(landed_schema().names)
    for name in ("event_bytes", "is_bot", "kafka_offset"):
        with pytest.raises(TypeError, match=name):
            with_platform_fields([*sent, pa.field(name, pa.string())])
    assert with_platform_fields(sent).names[:5] == [f.name for f in sent]


def test_clickhouse_ddl_has_the_lake_columns_in_order(tmp_path: Path) -> None:
    clickhouse = ClickHouse(f"chdb://{tmp_path}/ch", "ep_test")
    applied = clickhouse.apply_ddl(SQL_DIR)
    assert applied[0] == "001_events.sql"
    assert applied == sorted(p.name for p in SQL_DIR.glob("*.sql"))
    assert clickhouse.apply_ddl(SQL_DIR) == applied  # idempotent: a second run changes nothing
    with clickhouse.session() as client:
        columns = client.query(
            "SELECT name FROM system.columns WHERE database = 'ep_test' AND table = 'events' "
            "ORDER BY position"
        ).result_columns[0]
    assert columns == landed_schema().names


def test_retried_insert_with_the_same_token_is_deduplicated(
    tmp_path: Path, clickhouse_with_ddl
) -> None:
    clickhouse = clickhouse_with_ddl(tmp_path / "ch", "ep_test")
    events = decoded_examples()
    table = events_to_arrow(events, "events.raw", 0, list(range(len(events))), 5000)
    with clickhouse.session() as client:
        for token in ("batch-a", "batch-a", "batch-b"):
            client.insert_arrow(
                "ep_test.events", table, settings={"insert_deduplication_token": token}
            )
        count = client.query("SELECT count() FROM ep_test.events").result_rows[0][0]
    assert count == 2 * len(events)


def test_the_landing_insert_lands_what_insert_arrow_does_and_deduplicates_with_it(
    tmp_path: Path, clickhouse_with_ddl
) -> None:
    """``ClickHouse.insert_arrow`` (through a file, for memory) against the client's own: the
    same rows, and one batch's token recognised by both (a batch replayed after an upgrade)."""
    clickhouse = clickhouse_with_ddl(tmp_path / "ch", "ep_test")
    events = decoded_examples()
    table = pa.concat_tables(  # several record batches, as a big batch's decoding can give
        [events_to_arrow(events, "events.raw", 0, list(range(len(events))), 5000)] * 3
    )
    token = {"insert_deduplication_token": "batch-a"}
    with clickhouse.session() as client:
        client.command("CREATE TABLE ep_test.copy AS ep_test.events")
        client.insert_arrow("ep_test.events", table, settings=token)
        clickhouse.insert_arrow(client, "ep_test.copy", table, token)
        differences = [
            client.query(
                f"SELECT count() FROM (SELECT * FROM {a} EXCEPT SELECT * FROM {b})"
            ).result_rows[0][0]
            for a, b in [("ep_test.events", "ep_test.copy"), ("ep_test.copy", "ep_test.events")]
        ]
        client.insert_arrow("ep_test.copy", table, settings=token)  # replayed: dropped
        clickhouse.insert_arrow(client, "ep_test.events", table, token)  # the same
        counts = client.query(
            "SELECT (SELECT count() FROM ep_test.events), (SELECT count() FROM ep_test.copy)"
        ).result_rows[0]
    assert differences == [0, 0]
    assert counts == (3 * len(events), 3 * len(events))


INSERT_SCRIPT = """
import sys
from eventplatform.clickhouse import ClickHouse
ch = ClickHouse(sys.argv[1], "ep_test")
for i in range(8):
    with ch.session() as client:
        client.command(f"INSERT INTO ep_test.counter VALUES ('{sys.argv[2]}', {i})")
"""


def test_embedded_engine_is_shared_between_processes(tmp_path: Path) -> None:
    """chdb allows one process at a time; the session lock lets several take turns."""
    dsn = f"chdb://{tmp_path}/ch"
    clickhouse = ClickHouse(dsn, "ep_test")
    with clickhouse.session() as client:
        client.command("CREATE DATABASE IF NOT EXISTS ep_test")
        client.command(
            "CREATE TABLE ep_test.counter (who String, i Int32) ENGINE = MergeTree ORDER BY who"
        )
    writers = [
        subprocess.Popen([sys.executable, "-c", INSERT_SCRIPT, dsn, name])
        for name in ("a", "b", "c")
    ]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0]
    with clickhouse.session() as client:
        rows = client.query(
            "SELECT who, count() FROM ep_test.counter GROUP BY who ORDER BY who"
        ).result_rows
    assert rows == [("a", 8), ("b", 8), ("c", 8)]


def test_sessions_nest_in_one_thread_and_other_threads_wait(tmp_path: Path) -> None:
    """A nested session reuses the open engine handle; another thread waits for it to close."""
    clickhouse = ClickHouse(f"chdb://{tmp_path}/ch", "ep_test")
    seen: list[object] = []

    def other_thread() -> None:
        with clickhouse.session() as client:
            seen.append(client)
            assert client.query("SELECT 2").result_rows == [(2,)]

    with clickhouse.session() as outer:
        with clickhouse.session() as inner:
            assert inner is outer
        assert outer.query("SELECT 1").result_rows == [(1,)]  # still open after the inner
        waiting = threading.Thread(target=other_thread)
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive() and not seen  # the engine is this thread's until it closes
    waiting.join(60)
    assert len(seen) == 1 and seen[0] is not outer


def test_split_statements_drops_comments_and_keeps_semicolon_free_text() -> None:
    sql = "-- a comment; with a semicolon\nCREATE TABLE t (a String DEFAULT 'x;y');\nSELECT 1;\n"
    assert split_statements(sql) == ["CREATE TABLE t (a String DEFAULT 'x;y')", "SELECT 1"]
