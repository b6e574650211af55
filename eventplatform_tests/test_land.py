"""Landing on the real broker: what was produced is in the lake and in ClickHouse, once."""

from __future__ import annotations

import fcntl
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from confluent_kafka import TopicPartition

from eventplatform.clickhouse import platform_clickhouse
from eventplatform.events import EventCodec
from eventplatform.kafka.clients import make_consumer, make_producer
from eventplatform.kafka.dlq import parse_dead_letter
from eventplatform.land.lander import BatchReport, shard_partitions
from eventplatform.land.sources import build_lander
from eventplatform.settings import Settings
from eventplatform_tests.helpers import decoded_event


def produce_events(settings: Settings, n: int, start: int = 0, codec: EventCodec | None = None):
    """``n`` events spread over customers, hours and types; returns them by event_id."""
    codec = codec or EventCodec()
    producer = make_producer(settings.kafka.bootstrap)
    base = datetime(2026, 11, 20, 22, 0, tzinfo=UTC)
    sent = {}
    types = ["page_view", "click", "impression", "ad_click", "purchase", "bid"]
    for i in range(start, start + n):
        customer = f"cust-{i % 3}"
        happened = base + timedelta(minutes=7 * i)
        event = decoded_event(
            types[i % len(types)],
            customer,
            happened + timedelta(seconds=30),  # received on time: filed by hour in the lake
            event_id=f"ev-{i:06d}",
            event_ts=int(happened.timestamp() * 1000),
        )
        sent[event["event_id"]] = event
        producer.produce(settings.kafka.raw_topic, key=customer.encode(), value=codec.encode(event))
    assert producer.flush(30) == 0
    return sent


def lake_rows(settings: Settings, folder: str = "events") -> list[tuple]:
    pattern = settings.lake_dir / folder / "**" / "*.parquet"
    return duckdb.sql(
        f"SELECT event_id, customer_id, event_type, event_ts, event_date, event_hour "
        f"FROM read_parquet('{pattern}', hive_partitioning = true) ORDER BY event_id"
    ).fetchall()


def clickhouse_count(settings: Settings, sql: str) -> list[tuple]:
    clickhouse = platform_clickhouse(settings)
    with clickhouse.session() as client:
        return client.query(sql.format(db=clickhouse.database)).result_rows


def land_all(settings: Settings, source: str = "raw") -> list[BatchReport]:
    reports: list[BatchReport] = []
    shards = {"raw": settings.land.raw_shards, "dlq": settings.land.dlq_shards}[source]
    for shard in range(shards):
        build_lander(settings, source, shard).run(on_batch=reports.append)
    return reports


def test_shards_split_partitions_without_overlap() -> None:
    owned = [shard_partitions(list(range(12)), s, 4) for s in range(4)]
    assert owned == [[0, 4, 8], [1, 5, 9], [2, 6, 10], [3, 7, 11]]
    with pytest.raises(ValueError, match=r"shard must be in 0\.\.3"):
        shard_partitions(list(range(12)), 4, 4)


def test_lands_what_was_produced_in_the_lake_and_clickhouse(topics: Settings) -> None:
    settings = topics
    sent = produce_events(settings, 300)
    reports = land_all(settings)

    assert sum(r.rows for r in reports) == 300
    assert all(r.dead_letters == 0 and r.lag == 0 for r in reports)
    assert all(r.latency_p99_ms is not None and r.latency_p99_ms > 0 for r in reports)
    rows = lake_rows(settings)
    assert [r[0] for r in rows] == sorted(sent)
    for event_id, customer, event_type, event_ts, event_date, event_hour in rows:
        event = sent[event_id]
        assert (customer, event_type) == (event["customer_id"], event["event_type"])
        assert int(event_ts.timestamp() * 1000) == event["event_ts"]
        assert (str(event_date), event_hour) == (f"{event_ts:%Y-%m-%d}", event_ts.hour)
    # Files are named by topic, partition and the batch's offset range.
    names = sorted(p.name for p in (settings.lake_dir / "events").rglob("*.parquet"))
    assert all(n.startswith(f"{settings.kafka.raw_topic}+") for n in names)

    ch = clickhouse_count(
        settings,
        "SELECT count(), uniqExact(event_id), sum(cost) FROM {db}.events",
    )
    expected_cost = sum(e["payload"].get("cost", 0) or 0 for e in sent.values())
    assert ch[0][:2] == (300, 300)
    assert ch[0][2] == pytest.approx(expected_cost)

    # The group's offsets are committed: nothing left, and a second pass lands nothing.
    consumer = make_consumer(settings.kafka.bootstrap, settings.land.group_id)
    committed = consumer.committed(
        [TopicPartition(settings.kafka.raw_topic, p) for p in range(4)], timeout=10
    )
    consumer.close()
    assert sum(max(0, tp.offset) for tp in committed) == 300  # no commit yet: -1001
    assert land_all(settings) == []


def test_a_run_keeps_the_embedded_engine_open_across_its_batches(topics: Settings) -> None:
    settings = topics
    settings.land.raw_shards = 1
    settings.land.batch_max_records = 40
    produce_events(settings, 200)
    summary = build_lander(settings, "raw", 0).run()
    assert (summary.rows, summary.batches, summary.engine_opens) == (200, 5, 1)
    ch = clickhouse_count(settings, "SELECT count(), uniqExact(event_id) FROM {db}.events")
    assert ch == [(200, 200)]


def test_a_run_hands_the_engine_over_to_whoever_waits_and_ends_after_its_open_limit(
    topics: Settings,
) -> None:
    """Another process's query gets the embedded engine between two batches; the run reopens
    it for the next, and ends at its open limit."""
    settings = topics
    settings.land.raw_shards = 1
    settings.land.batch_max_records = 40
    settings.land.max_opens_embedded = 2
    produce_events(settings, 200)
    readers: list[subprocess.Popen] = []
    waited: list[bool] = []

    def query_from_another_process(report: BatchReport) -> None:
        if readers:
            return
        readers.append(
            subprocess.Popen(
                [sys.executable, "-c", COUNT_EVENTS, settings.clickhouse_dsn],
                stdout=subprocess.PIPE,
                text=True,
            )
        )
        waited.append(_someone_waits_for(settings.clickhouse_dsn, within_s=60))

    first = build_lander(settings, "raw", 0).run(on_batch=query_from_another_process)
    out, _ = readers[0].communicate(timeout=60)
    assert waited == [True]
    assert out.split() == ["40"]  # it had the engine after the first batch, before the second
    # Full batches: the next is decoded while one is written, so the batch in hand when the
    # second open happens (the second or the third) is landed before the run ends.
    assert first.engine_opens == 2 and first.batches in (2, 3)
    assert first.rows == 40 * first.batches
    assert first.stopped_because.startswith("2 engine opens (max_opens_embedded")
    rest = build_lander(settings, "raw", 0).run()
    assert (rest.rows, rest.engine_opens) == (200 - first.rows, 1)
    assert rest.stopped_because.startswith("idle")
    ch = clickhouse_count(settings, "SELECT count(), uniqExact(event_id) FROM {db}.events")
    assert ch == [(200, 200)] and len(lake_rows(settings)) == 200


COUNT_EVENTS = """
import sys
from eventplatform.clickhouse import ClickHouse
with ClickHouse(sys.argv[1]).session() as client:
    print(client.command("SELECT count() FROM eventplatform.events"))
"""


def _someone_waits_for(dsn: str, within_s: float) -> bool:
    """Whether a process announces, within ``within_s``, that it waits for the engine (the
    shared lock on ``<folder>.want``)."""
    path = Path(dsn.removeprefix("chdb://"))
    deadline = time.monotonic() + within_s
    with open(path.with_name(path.name + ".want"), "a") as want:
        while time.monotonic() < deadline:
            try:
                fcntl.flock(want, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(want, fcntl.LOCK_UN)
            time.sleep(0.01)
    return False


def test_poison_messages_go_to_the_dlq_and_the_batch_goes_on(topics: Settings) -> None:
    settings = topics
    good = produce_events(settings, 20)
    producer = make_producer(settings.kafka.bootstrap)
    poison = {
        b"not avro at all": "bad_marker",
        b"\xc3\x01" + b"\x00" * 8 + b"body": "unknown_schema",
        EventCodec().encode(next(iter(good.values())))[:14]: "truncated",
        b"": "empty",
    }
    for value in poison:
        producer.produce(settings.kafka.raw_topic, key=b"cust-0", value=value)
    assert producer.flush(10) == 0

    reports = land_all(settings)
    assert sum(r.rows for r in reports) == 20
    assert sum(r.dead_letters for r in reports) == 4

    consumer = make_consumer(settings.kafka.bootstrap, "dlq-reader")
    consumer.subscribe([settings.kafka.dlq_topic])
    letters = []
    while len(letters) < 4:
        message = consumer.poll(10)
        assert message is not None, f"only {len(letters)} dead letters"
        letters.append(parse_dead_letter(message))
    consumer.close()
    assert {letter.value: letter.reason for letter in letters} == poison
    assert all(letter.stage == "land" and letter.customer_id == "cust-0" for letter in letters)
    assert all(letter.source_topic == settings.kafka.raw_topic for letter in letters)
    assert len({(letter.source_partition, letter.source_offset) for letter in letters}) == 4

    # The DLQ is landed too: dead letters in the lake and ClickHouse, with their reasons.
    assert sum(r.rows for r in land_all(settings, "dlq")) == 4
    by_reason = clickhouse_count(
        settings, "SELECT reason, count() FROM {db}.dead_letters GROUP BY reason ORDER BY reason"
    )
    assert by_reason == sorted((reason, 1) for reason in poison.values())
    in_lake = duckdb.sql(
        f"SELECT count() FROM read_parquet('{settings.lake_dir}/dead_letters/**/*.parquet')"
    ).fetchall()[0]
    assert in_lake == (4,)


def test_v1_and_v2_writers_on_one_topic_both_land(topics: Settings) -> None:
    settings = topics
    v1 = produce_events(settings, 10, codec=EventCodec(writer_version=1))
    v2 = produce_events(settings, 10, start=10)
    assert sum(r.rows for r in land_all(settings)) == 20
    versions = clickhouse_count(
        settings, "SELECT schema_version, count() FROM {db}.events GROUP BY 1 ORDER BY 1"
    )
    assert versions == [(1, 10), (2, 10)]
    assert len(lake_rows(settings)) == len(v1) + len(v2)


def test_a_batch_spanning_hours_writes_a_file_per_hour_with_one_name(topics: Settings) -> None:
    settings = topics
    produce_events(settings, 30)  # 7 minutes apart: 30 events span 4 hours
    reports = land_all(settings)
    files = list((settings.lake_dir / "events").rglob("*.parquet"))
    assert len({f.parent.name for f in files}) == 4
    # One batch, one partition: the same name (its offset range) in each hour's folder.
    stems = {r.file_stem() for report in reports for r in report.ranges}
    assert {f.stem for f in files} == stems
    assert len(files) > len(stems)
    counts = [
        duckdb.sql(f"SELECT count() FROM read_parquet('{f}')").fetchall()[0][0] for f in files
    ]
    assert sum(counts) == 30
