"""Adaptive batching on the real broker: a backlog drains in large batches, a trickle goes
out in small ones within seconds (``eventplatform/land/cadence.py``), and a Dagster run of
sub-second batches records one materialization per ``report_every_s`` carrying every
batch's offsets."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from dagster import AssetKey, DagsterInstance

from eventplatform.events import EventCodec
from eventplatform.kafka.clients import make_producer
from eventplatform.land.lander import BatchReport
from eventplatform.land.sources import build_lander
from eventplatform.settings import Settings
from eventplatform_tests.helpers import decoded_event
from eventplatform_tests.test_land import clickhouse_count
from eventplatform_tests.test_land_dagster import land_raw_shard_in_process

CODEC = EventCodec()


def produce(settings: Settings, n: int, prefix: str, pause_s: float = 0.0) -> None:
    """``n`` events over the topic's partitions, each received when it is produced."""
    producer = make_producer(settings.kafka.bootstrap)
    for i in range(n):
        now = datetime.now(UTC)
        event = decoded_event("click", f"c{i % 4}", now, event_id=f"{prefix}-{i:07d}")
        producer.produce(settings.kafka.raw_topic, key=b"c%d" % (i % 4), value=CODEC.encode(event))
        if pause_s:
            producer.flush(5)
            time.sleep(pause_s)
        elif i % 5000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0


def test_a_backlog_drains_in_full_batches(topics: Settings) -> None:
    """Behind by 12,000 messages with batches of up to 3,000: every batch but the last is
    full, whatever the linger (a poll that comes back full means more are waiting)."""
    settings = topics
    settings.land.raw_shards = 1
    settings.land.batch_max_records = 3_000
    settings.land.batch_max_wait_s = 30.0  # only the limits (or catching up) close a batch
    produce(settings, 12_000, "backlog")
    reports: list[BatchReport] = []
    build_lander(settings, "raw", 0).run(on_batch=reports.append)

    sizes = [r.messages for r in reports]
    assert sum(sizes) == 12_000
    assert sizes == [3_000] * 4, sizes
    assert [r.closed_because for r in reports[:-1]] == ["full"] * 3
    assert clickhouse_count(settings, "SELECT count() FROM {db}.events") == [(12_000,)]


def test_a_max_wait_shorter_than_the_linger_still_takes_what_is_fetched(
    topics: Settings,
) -> None:
    """With ``batch_max_wait_s`` under ``batch_linger_s`` a batch of messages that waited is
    as old as it may be from its first message on: it closes at once, with what the consumer
    has fetched already, not with that one message (2,000 batches of one, each a Parquet file
    and a ClickHouse part, were the result before)."""
    settings = topics
    settings.land.raw_shards = 1
    settings.land.batch_max_records = 150
    settings.land.batch_max_wait_s = 0.05
    settings.land.batch_linger_s = 0.2
    produce(settings, 2_000, "old")
    time.sleep(0.3)  # older than the linger: each batch starts at its max age
    reports: list[BatchReport] = []
    summary = build_lander(settings, "raw", 0).run(on_batch=reports.append)
    assert summary.rows == 2_000
    assert len(reports) <= 40, [r.messages for r in reports]  # 14 when all are fetched
    assert {r.closed_because for r in reports} <= {"full", "max_wait", "caught_up"}
    assert clickhouse_count(settings, "SELECT count() FROM {db}.events") == [(2_000,)]


def test_messages_that_waited_already_do_not_linger_again(topics: Settings) -> None:
    """A batch's age is its first message's (its Kafka timestamp): events that queued while
    the lander was busy, or before it started, have lingered already. Events produced 30 s
    ago, with a linger of 20 s: the batch closes as soon as the shard is caught up, not 20 s
    after the lander saw its first message."""
    settings = topics
    settings.land.raw_shards = 1
    settings.land.batch_linger_s = 20.0
    settings.land.batch_max_wait_s = 60.0
    producer = make_producer(settings.kafka.bootstrap)
    sent_ms = int(time.time() * 1000) - 30_000
    for i in range(500):
        event = decoded_event("click", "c0", datetime.now(UTC), event_id=f"waited-{i}")
        producer.produce(settings.kafka.raw_topic, value=CODEC.encode(event), timestamp=sent_ms)
    assert producer.flush(30) == 0
    reports: list[BatchReport] = []
    started = time.monotonic()
    summary = build_lander(settings, "raw", 0).run(on_batch=reports.append)
    took = time.monotonic() - started
    assert summary.rows == 500
    assert [r.closed_because for r in reports] == ["caught_up"] * len(reports)
    assert took < 15, f"the run took {took:.1f} s: the batch lingered again"


def test_a_trickle_goes_out_in_small_batches_within_seconds(topics: Settings) -> None:
    """One event every 50 ms for 3 s while a run lands: batches close because the shard is
    caught up (max_wait is 30 s here, so no clock closes them), each event is committed within
    a few seconds of being received, and every event lands once."""
    settings = topics
    settings.land.raw_shards = 1
    settings.land.batch_max_wait_s = 30.0
    settings.land.batch_linger_s = 0.2
    settings.land.idle_stop_s = 3.0
    produce(settings, 1, "warm")  # the run starts on a shard with something to land
    reports: list[BatchReport] = []
    stop = threading.Event()
    lander = build_lander(settings, "raw", 0)
    landing = threading.Thread(
        target=lander.run, kwargs={"on_batch": reports.append, "should_stop": stop.is_set}
    )
    landing.start()
    try:
        deadline = time.monotonic() + 120  # a loaded machine: the first fetch can be slow
        while not reports and time.monotonic() < deadline:
            time.sleep(0.1)
        assert reports, "the run landed nothing in 120 s"
        produce(settings, 60, "trickle", pause_s=0.05)
        while sum(r.rows for r in reports) < 61 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        landing.join(120)
    trickle = reports[1:]
    assert sum(r.rows for r in reports) == 61
    assert len(trickle) >= 3, [r.messages for r in trickle]  # small batches, not one of 60
    assert all(r.closed_because == "caught_up" for r in trickle)
    worst_ms = max(float(r.latencies_ms.max()) for r in trickle)
    assert worst_ms < 10_000, worst_ms  # typically well under 1 s; a loaded machine is slow
    assert clickhouse_count(settings, "SELECT count() FROM {db}.events") == [(61,)]


def test_sub_second_batches_are_recorded_together_with_their_offsets(topics: Settings) -> None:
    """A Dagster run of batches of 50: one materialization per report_every_s (60 s here,
    longer than the run), not one per batch, carrying each batch's offsets and every row."""
    settings = topics
    settings.land.batch_max_records = 50
    settings.land.report_every_s = 60.0
    produce(settings, 400, "window")
    with DagsterInstance.ephemeral() as instance:
        land_raw_shard_in_process(instance, settings)
        records = instance.fetch_materializations(AssetKey("events_lake"), limit=100).records
    metadata = [r.asset_materialization.metadata for r in records]
    assert sum(m["rows"].value for m in metadata) == 400
    batches = sum(m["batches"].value for m in metadata)
    assert batches >= 8 and len(metadata) == 2, (batches, len(metadata))  # first, then the rest
    merged = next(m for m in metadata if m["batches"].value > 1)
    listed = merged["batch_offsets"].value.splitlines()
    assert len(listed) == merged["batches"].value
    # every batch's ranges are listed, and they add up to the merged record's messages
    counted = sum(
        int(last) - int(first) + 1
        for line in listed
        for part in line.removeprefix("- ").split(", ")
        for first, last in [part.split(": ")[1].split("-")]
    )
    assert counted == merged["messages"].value
