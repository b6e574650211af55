"""Lake compaction on the real broker (``eventplatform/land/compact.py``): a closed hour's
small batch files become one file per source partition, readers (DuckDB over the lake's
current files, as the marts read it) count every row once before, during and after, the
offsets stay in the names, a kill -9 at any point of a pass loses and doubles nothing, and one
customer's history replay does not hold back the others' hours."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
from dagster import AssetKey, DagsterInstance, RunRequest, build_sensor_context

from eventplatform.defs.ingest.compaction import compact_lake_job, lake_compaction_sensor
from eventplatform.defs.resources import platform_resources
from eventplatform.events import EventCodec
from eventplatform.kafka.clients import make_producer
from eventplatform.land.compact import (
    COMPACT_TMP_PREFIX,
    CompactionPolicy,
    compact_lake,
    group_positions,
)
from eventplatform.land.crashpoints import CRASH_ENV
from eventplatform.land.lake import EVENTS_DIR, LATE_HOUR, current_files, current_paths, lake_file
from eventplatform.land.sources import build_lander
from eventplatform.settings import REPO_ROOT, Settings
from eventplatform_tests.helpers import decoded_event

CODEC = EventCodec()
NOW = datetime.now(UTC)
CLOSED_HOUR = (NOW - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)


def produce(settings: Settings, events: list[dict]) -> None:
    producer = make_producer(settings.kafka.bootstrap)
    for i, event in enumerate(events):
        producer.produce(settings.kafka.raw_topic, key=b"k%d" % (i % 8), value=CODEC.encode(event))
    assert producer.flush(30) == 0


def hour_events(n: int, prefix: str, hour: datetime, customer: str = "acme") -> list[dict]:
    """``n`` events of one hour, received a minute after they happened (filed by hour)."""
    out = []
    for i in range(n):
        happened = hour + timedelta(seconds=(i * 3599) // max(n, 1))
        out.append(
            decoded_event(
                "page_view",
                customer,
                happened + timedelta(minutes=1),
                event_id=f"{prefix}-{i:06d}",
                event_ts=int(happened.timestamp() * 1000),
            )
        )
    return out


def now_events(n: int, prefix: str) -> list[dict]:
    """Events of the hour still open (it happened when it was received)."""
    return [decoded_event("page_view", "acme", NOW, event_id=f"{prefix}-{i}") for i in range(n)]


def land(settings: Settings) -> None:
    settings.land.raw_shards = 1
    build_lander(settings, "raw", 0).run()


def reader_count(settings: Settings) -> tuple[int, int]:
    """(rows, distinct offsets) as a reader of the lake's current files sees them."""
    paths = current_paths(settings.lake_dir / EVENTS_DIR)
    if not paths:
        return 0, 0
    files = [str(p) for p in paths]
    con = duckdb.connect()  # one per call: the reader runs beside the test's thread
    try:
        rows = con.execute(
            "SELECT count(*), count(DISTINCT (kafka_partition, kafka_offset)) "
            "FROM read_parquet($files, union_by_name = true)",
            {"files": files},
        ).fetchall()
    finally:
        con.close()
    return rows[0]


def folder_of(settings: Settings, hour: datetime) -> Path:
    return settings.lake_dir / EVENTS_DIR / f"event_date={hour.date()}" / f"event_hour={hour.hour}"


def on_disk(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.parquet"))


def partitions_of(folder: Path) -> int:
    return len({f.partition for f in current_files(folder)})


def assert_lineage(folder: Path) -> None:
    """Each current file holds only its partition's rows, inside the range its name says."""
    for f in current_files(folder):
        table = pq.read_table(f.path, columns=["kafka_partition", "kafka_offset"])
        assert set(table.column("kafka_partition").to_pylist()) == {f.partition}
        offsets = table.column("kafka_offset").to_pylist()
        assert f.first <= min(offsets) and max(offsets) <= f.last, f.path.name


def test_a_closed_hour_becomes_one_file_per_partition_and_readers_count_every_row_once(
    topics: Settings,
) -> None:
    settings = topics
    settings.land.batch_max_records = 30
    produce(settings, hour_events(600, "closed", CLOSED_HOUR))
    produce(settings, now_events(60, "open"))
    land(settings)
    closed = folder_of(settings, CLOSED_HOUR)
    before = on_disk(closed)
    assert len(before) >= 20  # 20 batches (of one or more partitions each)
    partitions = partitions_of(closed)
    assert reader_count(settings) == (660, 660)

    # Nothing committed known (another group): nothing is compacted.
    report = compact_lake(settings.lake_dir, lambda topic: {}, CompactionPolicy())
    assert report.inputs == 0 and on_disk(closed) == before

    counts: list[tuple[int, int]] = []
    stop = threading.Event()

    def read_while_compacting() -> None:
        while not stop.is_set():
            counts.append(reader_count(settings))

    reader = threading.Thread(target=read_while_compacting)
    reader.start()
    try:
        with DagsterInstance.ephemeral() as instance:
            context = build_sensor_context(
                instance=instance, resources=platform_resources(settings)
            )
            lake_compaction = lake_compaction_sensor(settings.land.compact_interval_s)
            assert isinstance(lake_compaction(context), RunRequest)
            result = compact_lake_job.execute_in_process(
                instance=instance, resources=platform_resources(settings)
            )
            assert result.success
            observed = instance.fetch_observations(AssetKey("events_lake"), limit=1).records
            metadata = observed[0].asset_observation.metadata
            assert metadata["compacted_files"].value == len(before)
            assert metadata["written_files"].value == partitions
        time.sleep(0.2)
    finally:
        stop.set()
        reader.join(60)
    assert counts and set(counts) == {(660, 660)}, set(counts)  # never twice, never missing

    # One file per partition, named by its inputs' first and last offsets.
    current = current_files(closed)
    assert len(current) == partitions
    for f in current:
        inputs = [g for p in before if (g := lake_file(p)) and g.partition == f.partition]
        assert (f.first, f.last) == (min(g.first for g in inputs), max(g.last for g in inputs))
    assert_lineage(closed)
    # The open hour's few files are left for later; the superseded inputs wait for readers.
    assert len(on_disk(closed)) == len(before) + partitions

    report = compact(settings, CompactionPolicy(delete_after_s=0))
    assert report.deleted == len(before) and report.inputs == 0
    assert [f.path for f in current_files(closed)] == on_disk(closed)
    glob = settings.lake_dir / EVENTS_DIR / "**" / "*.parquet"
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall() == [(660,)]


def compact(settings: Settings, policy: CompactionPolicy):
    """One pass against the landing group's committed offsets."""
    positions = group_positions(settings.kafka.bootstrap, settings.land.group_id)
    try:
        return compact_lake(settings.lake_dir, positions, policy)
    finally:
        positions.close()


COMPACT = [sys.executable, "-m", "eventplatform.cli", "compact", "--quiet"]  # what users run


def test_a_pass_killed_at_any_point_loses_and_doubles_nothing(topics: Settings) -> None:
    """kill -9 before the compacted file's rename, after it, and at a random moment: readers
    count every row once after each kill, and the next pass finishes the work."""
    settings = topics
    settings.land.batch_max_records = 40
    produce(settings, hour_events(400, "crash", CLOSED_HOUR))
    land(settings)
    closed = folder_of(settings, CLOSED_HOUR)
    assert len(on_disk(closed)) >= 10
    partitions = partitions_of(closed)

    def run(crash_at: str | None = None, kill_after_s: float | None = None) -> int:
        env = {**os.environ, "EP_LAND_COMPACT_DELETE_AFTER_S": "0"}
        env.pop(CRASH_ENV, None)
        if crash_at:
            env[CRASH_ENV] = crash_at
        process = subprocess.Popen(COMPACT, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL)
        if kill_after_s is not None:
            time.sleep(kill_after_s)
            process.send_signal(signal.SIGKILL)
        return process.wait(120)

    assert run("compact_before_rename") == -signal.SIGKILL
    assert list(closed.glob(f"{COMPACT_TMP_PREFIX}*"))  # the half-done work, invisible
    assert reader_count(settings) == (400, 400)
    assert run("compact_after_rename") == -signal.SIGKILL
    assert reader_count(settings) == (400, 400)
    assert len(current_files(closed)) < len(on_disk(closed))  # inputs superseded, not gone
    run(kill_after_s=random.Random(7).uniform(0.5, 3.0))  # wherever it is by then
    assert reader_count(settings) == (400, 400)
    assert run() == 0
    assert run() == 0  # the second deletes what the first superseded
    assert reader_count(settings) == (400, 400)
    assert len(current_files(closed)) == partitions
    assert on_disk(closed) == [f.path for f in current_files(closed)]
    assert_lineage(closed)


def test_a_history_replay_does_not_hold_back_the_others_hours(topics: Settings) -> None:
    """One customer replays more than a year of history (late events: one file per partition and
    day); with a pass budget of 100 input files the other customers' closed hour is compacted
    in the first pass, and the replay's day folders wait their turn; the lake stays at most a
    file per partition and day for them."""
    settings = topics
    settings.land.batch_max_records = 50
    days = 100
    history = []
    for i in range(300):  # three events a day, each day in several batches
        happened = NOW - timedelta(days=30 + (i % days) * 4, hours=1)
        history.append(
            decoded_event(
                "page_view",
                "replayer",
                NOW,
                event_id=f"old-{i:06d}",
                event_ts=int(happened.timestamp() * 1000),
            )
        )
    others = hour_events(150, "others", CLOSED_HOUR, customer="victim")
    mixed = [e for pair in zip(history[: len(others)], others, strict=True) for e in pair]
    produce(settings, mixed)  # interleaved
    produce(settings, history[len(others) :])
    land(settings)
    closed = folder_of(settings, CLOSED_HOUR)
    late = list((settings.lake_dir / EVENTS_DIR).glob(f"event_date=*/event_hour={LATE_HOUR}"))
    assert len(late) == days
    hour_partitions = partitions_of(closed)
    assert len(on_disk(closed)) > hour_partitions  # work to do in the others' hour
    assert sum(len(on_disk(folder)) for folder in late) > 100  # more than a pass takes

    policy = CompactionPolicy(max_input_files=100, grace_s=0, delete_after_s=0)
    report = compact(settings, policy)
    assert len(current_files(closed)) == hour_partitions  # the others' hour first
    assert report.deferred_folders > 0 and report.inputs <= 100
    for _ in range(20):  # later passes work through the replay's folders
        if compact(settings, policy).outputs == 0:
            break
    partitions = settings.kafka.raw_partitions
    assert all(len(current_files(folder)) <= partitions for folder in late)
    assert reader_count(settings) == (450, 450)
