"""A landing run for one shard: Kafka micro-batches into the Parquet lake and ClickHouse.

Exactly once in effect, whatever point a crash hits. For each micro-batch:

1. the batch's offset ranges (first and last offset per partition) are written to a
   *manifest* before anything else;
2. the messages are decoded; undecodable ones become dead letters;
3. the Parquet files are written (deterministic names from the ranges, atomic rename);
4. the rows are inserted into ClickHouse with ``insert_deduplication_token`` derived from the
   ranges (the table keeps a deduplication window, so the same token twice is one insert),
   at the same time as step 3;
5. the dead letters are produced and flushed, then the offsets (last + 1) are committed;
6. the manifest is removed.

A run that starts and finds a manifest replays exactly those ranges first (unless the offsets
show it was committed), so it rebuilds the same batch: the same file names replace the same
files and the same token makes ClickHouse drop the repeat. A dead letter can be produced twice
(a crash between 5's flush and commit); it carries its source offset, and whoever reads the
DLQ counts positions, not messages.

One run per shard at a time is the orchestrator's job (the Dagster sensor and a tag
concurrency limit), and each run holds the shard's lock (``fence.py``) so that a second lander
cannot land beside it. Shard ``i`` of ``n`` owns the partitions ``p`` with ``p % n == i``.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from eventplatform.clickhouse import ClickHouse
from eventplatform.kafka.clients import (
    committed_offsets,
    make_consumer,
    make_producer,
    watermark_offsets,
)
from eventplatform.kafka.dlq import DEFAULT_MAX_VALUE_BYTES, DeadLetter, send_dead_letter
from eventplatform.land.batches import RowBuilder
from eventplatform.land.fence import ShardLock
from eventplatform.land.lake import (
    OffsetRange,
    WrittenFile,
    remove_stale_temporaries,
    sync_folders,
)
from eventplatform.settings import LandSettings

CRASH_ENV = "EP_LAND_CRASH_AT"
COST_EVENT_TYPES = pa.array(["impression", "ad_click", "conversion"])
_MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only


def crashpoint(name: str) -> None:
    """Fault injection for the crash tests: die here, as ``kill -9`` would, when asked to."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def shard_partitions(partitions: list[int], shard: int, shards: int) -> list[int]:
    if not 0 <= shard < shards:
        raise ValueError(f"shard must be in 0..{shards - 1}, got {shard}")
    return [p for p in sorted(partitions) if p % shards == shard]


@dataclass
class BatchReport:
    """One landed micro-batch: what the orchestrator records as materializations."""

    topic: str
    shard: int
    kind: str
    ranges: list[OffsetRange]
    rows: int
    dead_letters: int
    files: list[WrittenFile]
    lag: int  # messages of the shard still behind the batch
    latencies_ms: np.ndarray | None  # per event, received -> committed (queryable); events only
    cost_events: int  # impressions, ad clicks, conversions: spend may have changed
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)  # decode, parquet, ...
    replayed: bool = False

    @property
    def latency_p50_ms(self) -> float | None:
        return _percentile(self.latencies_ms, 50)

    @property
    def latency_p99_ms(self) -> float | None:
        return _percentile(self.latencies_ms, 99)

    @property
    def messages(self) -> int:
        return sum(r.count for r in self.ranges)

    @property
    def parquet_bytes(self) -> int:
        return sum(f.bytes for f in self.files)


@dataclass
class RunSummary:
    batches: int = 0
    rows: int = 0
    dead_letters: int = 0
    replayed_batches: int = 0
    busy_s: float = 0.0  # from the first batch's collection to the last batch's commit
    stopped_because: str = ""
    reports: list[BatchReport] = field(default_factory=list, repr=False)


class Manifest:
    """The ranges of the batch in flight, written before the sinks and removed after commit."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def of_shard(
        cls, lake_dir: Path, group_id: str, topic: str, shard: int, shards: int
    ) -> Manifest:
        """Where the landing run of a shard keeps its manifest (beside the lake it writes)."""
        return cls(lake_dir / "_landing" / group_id / f"{topic}.shard-{shard}-of-{shards}.json")

    def write(self, ranges: list[OffsetRange]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        body = [[r.topic, r.partition, r.first, r.last] for r in ranges]
        with open(tmp, "w") as f:
            json.dump({"ranges": body, "written_ms": int(time.time() * 1000)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        sync_folders([self.path.parent], self.path.parent)  # the rename is durable too

    def read(self) -> list[OffsetRange] | None:
        if not self.path.exists():
            return None
        data = json.loads(self.path.read_text())
        return [OffsetRange(t, p, first, last) for t, p, first, last in data["ranges"]]

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)  # lost in a power cut: the replay finds it committed


class ShardLander:
    """Lands one shard of one topic until told to stop, idle, or out of time."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        shard: int,
        shards: int,
        rows: RowBuilder,
        lake_dir: Path,
        clickhouse: ClickHouse,
        dlq_topic: str,
        settings: LandSettings,
        dlq_max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.shard = shard
        self.shards = shards
        self.rows = rows
        self.lake_dir = lake_dir
        self.clickhouse = clickhouse
        self.dlq_topic = dlq_topic
        self.dlq_max_value_bytes = dlq_max_value_bytes
        self.settings = settings
        self.manifest = Manifest.of_shard(lake_dir, settings.group_id, topic, shard, shards)
        self.lock = ShardLock(
            self.manifest.path.with_suffix(".lock"), f"shard {shard} of {shards} of {topic}"
        )
        self.partitions: list[int] = []
        self.log: Callable[[str], None] = lambda line: None

    # -- the loop -------------------------------------------------------------------------

    def run(
        self,
        on_batch: Callable[[BatchReport], None] = lambda report: None,
        should_stop: Callable[[], bool] = lambda: False,
        log: Callable[[str], None] = lambda line: None,
    ) -> RunSummary:
        s = self.settings
        self.lock.acquire(s.shard_lock_wait_s)  # before the manifest is read: it is ours
        try:
            return self._run(on_batch, should_stop, log)
        finally:
            self.lock.release()

    def _run(
        self,
        on_batch: Callable[[BatchReport], None],
        should_stop: Callable[[], bool],
        log: Callable[[str], None],
    ) -> RunSummary:
        s = self.settings
        consumer = make_consumer(
            self.bootstrap,
            s.group_id,
            **{"queued.max.messages.kbytes": s.consumer_queue_kbytes},
        )
        producer = make_producer(self.bootstrap)
        self._inserter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self.log = log
        summary = RunSummary()
        started = last_message = time.monotonic()
        first_collect = 0.0
        try:
            self.partitions = self._shard_partitions(consumer)
            if not self.partitions:
                summary.stopped_because = "the shard has no partitions"
                return summary
            stale = sum(
                remove_stale_temporaries(
                    self.lake_dir / self.rows.lake_folder, f"{self.topic}+{p}+"
                )
                for p in self.partitions
            )
            if stale:
                log(f"removed {stale} temporary files a crashed run left")
            replay = self._pending_batch(consumer)
            if replay is not None:
                log(f"replaying the batch a previous run did not finish: {replay}")
                messages = self._read_exactly(consumer, replay)
                self._finish(self._land(consumer, producer, messages, True), summary, on_batch)
            starts = self._committed_positions(consumer)
            consumer.assign(starts)
            while True:
                if should_stop():
                    summary.stopped_because = "asked to stop"
                    break
                now = time.monotonic()
                if now - started >= s.max_run_s:
                    summary.stopped_because = f"ran {s.max_run_s:.0f}s (max_run_s)"
                    break
                collecting = time.monotonic()
                messages = self._collect(consumer)
                if not messages:
                    if time.monotonic() - last_message >= s.idle_stop_s:
                        if self._caught_up(consumer, starts):
                            summary.stopped_because = f"idle for {s.idle_stop_s:.0f}s"
                            break
                        last_message = time.monotonic()  # slow to fetch, not idle: go on
                    continue
                last_message = time.monotonic()
                first_collect = first_collect or collecting
                self._finish(self._land(consumer, producer, messages, False), summary, on_batch)
                summary.busy_s = time.monotonic() - first_collect
                limit = s.max_batches_embedded if self.clickhouse.embedded else 0
                if limit and summary.batches >= limit:
                    summary.stopped_because = (
                        f"{limit} batches (max_batches_embedded: chdb leaks a little per open)"
                    )
                    break
            return summary
        finally:
            self._inserter.shutdown(wait=True)
            consumer.close()

    def _committed_positions(self, consumer: Consumer) -> list[TopicPartition]:
        """Where to start: the group's committed offsets, the beginning where there is none."""
        tps = [TopicPartition(self.topic, p) for p in self.partitions]
        return [
            TopicPartition(
                self.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            )
            for tp in committed_offsets(consumer, tps, 60)
        ]

    def _caught_up(self, consumer: Consumer, starts: list[TopicPartition]) -> bool:
        """Nothing left to read on the shard's partitions. A quiet spell alone is not enough:
        on a loaded machine the first fetch after a start can take longer than the idle time."""
        for start, now_at in zip(starts, consumer.position(starts), strict=True):
            try:
                low, high = watermark_offsets(consumer, start, 30)
            except KafkaException as exc:  # the broker is away: not known to be done, go on
                self.log(f"cannot tell the lag of {start.topic}[{start.partition}]: {exc}")
                return False
            position = now_at.offset if now_at.offset >= 0 else start.offset
            if high > (position if position >= 0 else low):
                return False
        return True

    def _finish(self, report: BatchReport, summary: RunSummary, on_batch) -> None:
        summary.batches += 1
        summary.rows += report.rows
        summary.dead_letters += report.dead_letters
        summary.replayed_batches += report.replayed
        on_batch(report)
        _return_free_heap()

    def _shard_partitions(self, consumer: Consumer) -> list[int]:
        metadata = consumer.list_topics(self.topic, timeout=30).topics.get(self.topic)
        if metadata is None or metadata.error is not None:
            error = metadata.error if metadata is not None else "missing"
            raise RuntimeError(f"topic {self.topic} cannot be read: {error}")
        return shard_partitions(list(metadata.partitions), self.shard, self.shards)

    # -- one batch --------------------------------------------------------------------------

    def _collect(self, consumer: Consumer) -> list[Message]:
        """Up to the batch limits: records, bytes, and wait time from the first message."""
        s = self.settings
        messages: list[Message] = []
        size = 0
        deadline: float | None = None
        while len(messages) < s.batch_max_records and size < s.batch_max_bytes:
            timeout = 0.5 if deadline is None else deadline - time.monotonic()
            if timeout <= 0:
                break
            wanted = min(10_000, s.batch_max_records - len(messages))
            for message in consumer.consume(num_messages=wanted, timeout=timeout):
                if message.error() is not None:
                    _raise_unless_transient(message.error(), self.log)
                    continue
                messages.append(message)
                size += len(message.value() or b"")
            if not messages:
                return messages  # nothing for half a second: the caller checks stop and idle
            if deadline is None:
                deadline = time.monotonic() + s.batch_max_wait_s
        return messages

    def _land(
        self, consumer: Consumer, producer, messages: list[Message], replayed: bool
    ) -> BatchReport:
        """Land one batch; ``messages`` is emptied once decoded (to free memory early)."""
        t0 = time.monotonic()
        stages: dict[str, float] = {}
        clock = _StageClock(stages)
        ranges = offset_ranges(messages)
        self.manifest.write(ranges)
        crashpoint("after_manifest")
        clock("manifest")

        landed_ms = int(time.time() * 1000)
        table, dead = self.rows.build(messages, landed_ms)
        # The rows are all the sinks need: let the batch's Message objects (about as big as
        # the table) go before the sinks' own buffers, and before the next batch is collected.
        messages.clear()
        crashpoint("after_decode")
        clock("decode")

        # The two sinks at once (both release the GIL); the commit waits for both.
        files: list[WrittenFile] = []
        if table.num_rows:
            inserting = self._inserter.submit(self._insert, table, ranges, stages)
            try:
                started = time.perf_counter()
                files = self.rows.write_lake(self.lake_dir, table, ranges)
                stages["parquet"] = stages.get("parquet", 0.0) + time.perf_counter() - started
                crashpoint("after_parquet")
            except BaseException:
                wait([inserting])  # never leave an insert running behind a failed run
                raise
            inserting.result()
        crashpoint("after_clickhouse")
        clock("sinks")

        if dead:
            self._send_dead_letters(producer, dead)
        crashpoint("after_dead_letters")

        self._commit(
            consumer, [TopicPartition(self.topic, r.partition, r.last + 1) for r in ranges]
        )
        crashpoint("after_commit")
        self.manifest.clear()
        clock("commit")

        done_ms = int(time.time() * 1000)
        return BatchReport(
            topic=self.topic,
            shard=self.shard,
            kind=self.rows.kind,
            ranges=ranges,
            rows=table.num_rows,
            dead_letters=len(dead),
            files=files,
            lag=self._lag(consumer, ranges),
            latencies_ms=_latencies(table, done_ms),
            cost_events=_cost_events(table),
            seconds=time.monotonic() - t0,
            stage_seconds=stages,
            replayed=replayed,
        )

    def _insert(self, table: pa.Table, ranges: list[OffsetRange], stages: dict[str, float]) -> None:
        """One insert per group of at most ``clickhouse_partitions_per_insert`` months, each
        with its own token derived from the ranges (a replay forms the same groups)."""
        started = time.perf_counter()
        limit = self.settings.clickhouse_partitions_per_insert
        token = dedup_token(ranges)
        parts = partition_groups(table, self.rows.time_column, limit)
        with self.clickhouse.session() as client:
            for index, part in enumerate(parts):
                self.clickhouse.insert_arrow(
                    client,
                    f"{self.clickhouse.database}.{self.rows.clickhouse_table}",
                    part,
                    settings={
                        "insert_deduplication_token": token
                        if len(parts) == 1
                        else f"{token}#{index}",
                        "max_partitions_per_insert_block": str(limit),
                    },
                )
        stages["clickhouse"] = stages.get("clickhouse", 0.0) + time.perf_counter() - started

    def _send_dead_letters(self, producer: Producer, letters: list[DeadLetter]) -> None:
        """Produce and wait for each letter's delivery report: the offsets are committed only
        once the broker holds every one. An empty queue after ``flush()`` is not enough: a
        message the broker refused (too large, no such topic) leaves the queue as well."""
        failures: list[str] = []

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                failures.append(str(err))

        for letter in letters:
            while True:
                try:
                    send_dead_letter(
                        producer,
                        self.dlq_topic,
                        letter.truncate(self.dlq_max_value_bytes),
                        on_delivery=delivered,
                    )
                    break
                except BufferError:  # the producer's queue is full: let it drain
                    producer.poll(0.5)
        remaining = producer.flush(self.settings.commit_timeout_s)
        if remaining or failures:
            raise RuntimeError(
                f"{remaining + len(failures)} of {len(letters)} dead letters not acknowledged "
                f"by the broker ({'; '.join(sorted(set(failures))[:3]) or 'timed out'}); "
                "the batch is not committed and will be replayed"
            )

    def _commit(self, consumer: Consumer, offsets: list[TopicPartition]) -> None:
        """Commit, riding out a coordinator that moves or a broker that restarts.

        The sinks already hold the batch, so waiting is cheaper than failing (which would
        replay it); past ``commit_timeout_s`` the run fails and the next one replays.
        """
        deadline = time.monotonic() + self.settings.commit_timeout_s
        while True:
            try:
                for tp in consumer.commit(offsets=offsets, asynchronous=False) or []:
                    if tp.error is not None:
                        raise KafkaException(tp.error)
                return
            except KafkaException as exc:
                error = exc.args[0]
                if error.fatal() or not _retriable(error) or time.monotonic() > deadline:
                    raise
                self.log(f"commit waits: {error}")
                time.sleep(1.0)

    def _lag(self, consumer: Consumer, ranges: list[OffsetRange]) -> int:
        """Behind the batch, from the watermarks the fetches brought (no extra round trip)."""
        done = {r.partition: r.last + 1 for r in ranges}
        lag = 0
        for p in self.partitions:
            tp = TopicPartition(self.topic, p)
            _, high = consumer.get_watermark_offsets(tp, cached=True)
            position = done.get(p)
            if position is None:
                position = consumer.position([tp])[0].offset
            if high >= 0 and position >= 0:
                lag += max(0, high - position)
        return lag

    # -- recovery ------------------------------------------------------------------------

    def _pending_batch(self, consumer: Consumer) -> list[OffsetRange] | None:
        """The manifest's ranges if their batch was not committed, else None (and clear it)."""
        ranges = self.manifest.read()
        if ranges is None:
            return None
        committed = committed_offsets(
            consumer, [TopicPartition(self.topic, r.partition) for r in ranges], 30
        )
        # One commit covers the whole batch, so one partition past its range means all are.
        if any(tp.offset > r.last for tp, r in zip(committed, ranges, strict=True)):
            self.manifest.clear()
            return None
        return ranges

    def _read_exactly(
        self, consumer: Consumer, ranges: list[OffsetRange], timeout_s: float = 120
    ) -> list[Message]:
        """The messages of exactly these ranges, in the order Kafka gives them."""
        consumer.assign([TopicPartition(r.topic, r.partition, r.first) for r in ranges])
        last = {r.partition: r.last for r in ranges}
        open_partitions = set(last)
        messages: list[Message] = []
        deadline = time.monotonic() + timeout_s
        while open_partitions:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"replaying {ranges}: partitions {sorted(open_partitions)} did not reach "
                    f"their last offset in {timeout_s:.0f}s (deleted by retention?)"
                )
            for message in consumer.consume(num_messages=10_000, timeout=0.5):
                if message.error() is not None:
                    _raise_unless_transient(message.error(), self.log)
                    continue
                p = message.partition()
                if p in open_partitions and message.offset() <= last[p]:
                    messages.append(message)
                    if message.offset() == last[p]:
                        open_partitions.discard(p)
        consumer.unassign()
        if offset_ranges(messages) != ranges:
            raise RuntimeError(f"replay read {offset_ranges(messages)}, expected {ranges}")
        return messages


_FATAL_CODES = {
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.OFFSET_OUT_OF_RANGE,
}


_RETRIABLE_COMMIT = {
    KafkaError._WAIT_COORD,
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
}


def _retriable(error: KafkaError) -> bool:
    return error.retriable() or error.code() in _RETRIABLE_COMMIT


def _raise_unless_transient(error: KafkaError, log: Callable[[str], None]) -> None:
    """librdkafka reports and retries transient errors itself; fail only on what won't heal."""
    if error.code() == KafkaError._PARTITION_EOF:
        return
    if error.fatal() or error.code() in _FATAL_CODES:
        raise KafkaException(error)
    log(f"kafka (retrying): {error}")


class _StageClock:
    """Adds the time since the previous call to the named stage."""

    def __init__(self, stages: dict[str, float]) -> None:
        self.stages = stages
        self.last = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - self.last
        self.last = now


def _return_free_heap() -> None:
    """Give the C heap's free pages back to the system once a batch is done.

    glibc keeps what a batch freed (its Kafka messages, the decoder's columns, librdkafka's
    fetch buffers) in per-thread arenas, and the next batch does not always allocate where
    the last one freed: that was 60-90 MiB of the landing process's peak. It takes milliseconds.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def offset_ranges(messages: list[Message]) -> list[OffsetRange]:
    """First and last offset per partition, in partition order."""
    bounds: dict[int, list[int]] = {}
    topic = messages[0].topic()
    for message in messages:
        offset = message.offset()
        b = bounds.get(message.partition())
        if b is None:
            bounds[message.partition()] = [offset, offset]
        else:
            b[0] = min(b[0], offset)
            b[1] = max(b[1], offset)
    return [OffsetRange(topic, p, first, last) for p, (first, last) in sorted(bounds.items())]


def partition_groups(table: pa.Table, column: str, limit: int) -> list[pa.Table]:
    """The table split so that no part spans more than ``limit`` months of ``column`` (the
    ClickHouse tables are partitioned by month, and an insert into more partitions than the
    server allows fails whole). Usually one part: the table itself."""
    ts = table.column(column)
    months = pc.add(pc.multiply(pc.year(ts), 100), pc.month(ts))
    distinct = sorted(pc.unique(months).to_pylist())
    if len(distinct) <= limit:
        return [table]
    return [
        table.filter(pc.is_in(months, value_set=pa.array(distinct[i : i + limit])))
        for i in range(0, len(distinct), limit)
    ]


def dedup_token(ranges: list[OffsetRange]) -> str:
    """The same batch, the same token: ClickHouse drops a repeated insert."""
    return f"{ranges[0].topic}:" + ",".join(f"{r.partition}:{r.first}-{r.last}" for r in ranges)


def _latencies(table: pa.Table, done_ms: int) -> np.ndarray | None:
    if "received_ts" not in table.column_names or table.num_rows == 0:
        return None
    received = pc.cast(pc.cast(table.column("received_ts"), pa.timestamp("ms")), pa.int64())
    return done_ms - received.to_numpy(zero_copy_only=False)


def _percentile(values: np.ndarray | None, q: float) -> float | None:
    return None if values is None else float(np.percentile(values, q))


def _cost_events(table: pa.Table) -> int:
    if "event_type" not in table.column_names or table.num_rows == 0:
        return 0
    return int(
        pc.sum(pc.is_in(table.column("event_type"), value_set=COST_EVENT_TYPES)).as_py() or 0
    )
