"""The lander's parts on their own: the checkpoint against committed offsets, the month
groups of the ClickHouse insert, and dead letters truncated and confirmed by the broker.

The whole run (and its crashes) is ``test_land.py`` and ``test_land_crash.py``; these pin
each seam of the split (``checkpoint.py``, ``sinks.py``, ``commit.py``) in seconds.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from confluent_kafka import TopicPartition

from eventplatform.events.arrow import events_to_arrow
from eventplatform.kafka.clients import make_admin, make_consumer, make_producer
from eventplatform.kafka.dlq import DeadLetter, parse_dead_letter
from eventplatform.kafka.topics import TopicSpec, ensure_topics
from eventplatform.land.checkpoint import Manifest
from eventplatform.land.commit import send_dead_letters
from eventplatform.land.lake import OffsetRange, write_events
from eventplatform.land.sinks import dedup_token, partition_groups
from eventplatform_tests.helpers import decoded_event


def test_the_checkpoint_replays_an_uncommitted_batch_and_drops_a_committed_one(
    bootstrap: str, unique: str, tmp_path: Path
) -> None:
    topic, group = f"ckpt.{unique}", f"land-{unique}"
    ensure_topics(make_admin(bootstrap), [TopicSpec(topic, 2, 1, {})])
    manifest = Manifest.of_shard(tmp_path, group, topic, 0, 1)
    ranges = [OffsetRange(topic, 0, 0, 9), OffsetRange(topic, 1, 5, 7)]
    consumer = make_consumer(bootstrap, group)
    try:
        assert manifest.pending(consumer) is None  # no batch in flight
        manifest.write(ranges)
        assert manifest.pending(consumer) == ranges  # nothing committed: replay it
        consumer.commit(offsets=[TopicPartition(topic, 1, 8)], asynchronous=False)
        assert manifest.pending(consumer) is None  # committed (one partition is enough)
        assert not manifest.path.exists()
    finally:
        consumer.close()


def test_the_insert_is_split_by_month_groups_and_each_group_keeps_its_token() -> None:
    months = [datetime(2026, m, 3, tzinfo=UTC) for m in (1, 2, 2, 3, 4, 5)]
    table = pa.table({"event_ts": pa.array(months, pa.timestamp("ms", tz="UTC"))})
    assert partition_groups(table, "event_ts", 5) == [table]  # usually: the table itself
    parts = partition_groups(table, "event_ts", 2)
    assert [sorted({t.month for t in p.column("event_ts").to_pylist()}) for p in parts] == [
        [1, 2],
        [3, 4],
        [5],
    ]
    assert sum(p.num_rows for p in parts) == table.num_rows
    ranges = [OffsetRange("events.raw", 0, 10, 19), OffsetRange("events.raw", 3, 4, 4)]
    assert dedup_token(ranges) == "events.raw:0:10-19,3:4-4"  # a replay forms the same


def test_dead_letters_are_truncated_and_confirmed_before_the_commit(
    bootstrap: str, unique: str
) -> None:
    topic = f"dlq.{unique}"
    ensure_topics(make_admin(bootstrap), [TopicSpec(topic, 1, 1, {})])
    letters = [
        DeadLetter("bad_marker", "not an event", "land", b"x" * 5000, "cust-a", "events.raw", 0, 1),
        DeadLetter("bad_marker", "not an event", "land", b"small", "cust-a", "events.raw", 0, 2),
    ]
    send_dead_letters(make_producer(bootstrap), topic, letters, 30, max_value_bytes=100)

    consumer = make_consumer(bootstrap, f"g-{unique}")
    consumer.assign([TopicPartition(topic, 0, 0)])
    read: list[DeadLetter] = []
    deadline = time.monotonic() + 30
    while len(read) < 2 and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and not message.error():
            read.append(parse_dead_letter(message))
    consumer.close()
    big, small = read
    assert len(big.value) == 100 and big.original_length == 5000 and big.truncated
    assert "[value truncated to 100 of 5000 bytes" in big.detail
    assert small.value == b"small" and not small.truncated


def _interleaved_batch(order: list[int]) -> tuple[pa.Table, list[OffsetRange]]:
    """Eight events around 11:00 (hours 10 and 11) from partitions 0 and 1, rows in ``order``."""
    start = datetime(2026, 12, 7, 10, 59, 50, tzinfo=UTC)
    events = [
        decoded_event("page_view", "c1", start + timedelta(seconds=5 * i), event_id=f"e{i}")
        for i in range(8)
    ]
    partitions = [1, 0, 1, 0, 0, 1, 0, 1]
    offsets = [20, 10, 21, 11, 12, 22, 13, 23]
    table = events_to_arrow(events, "events.raw", 0, offsets, 0)
    index = table.schema.get_field_index("kafka_partition")
    table = table.set_column(index, table.schema.field(index), pa.array(partitions, pa.int32()))
    ranges = [OffsetRange("events.raw", 0, 10, 13), OffsetRange("events.raw", 1, 20, 23)]
    return table.take(pa.array(order)), ranges


def test_a_batch_is_cut_into_one_file_per_partition_and_hour_each_in_batch_order(
    tmp_path: Path,
) -> None:
    # interleaved (each file's rows taken by its writer) and in order already (sliced)
    for name, order in (("mixed", list(range(8))), ("sorted", [1, 3, 4, 6, 0, 2, 5, 7])):
        table, ranges = _interleaved_batch(order)
        written = write_events(tmp_path / name, table, ranges)
        ids = table.column("event_id").to_pylist()
        parts = table.column("kafka_partition").to_pylist()
        expected = {}
        for event_id, partition in zip(ids, parts, strict=True):
            hour = 10 if event_id in ("e0", "e1") else 11
            stem = next(r for r in ranges if r.partition == partition).file_stem()
            expected.setdefault(f"event_hour={hour}/{stem}.parquet", []).append(event_id)
        found = {
            f"{w.path.parent.name}/{w.path.name}": pq.read_table(w.path)
            .column("event_id")
            .to_pylist()
            for w in written
        }
        assert found == expected, name
        assert sum(w.rows for w in written) == 8
