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

When the shard is behind (a batch closed full), the next batch is collected and decoded while
this one's sinks write, so the two cores share the decoding and the writing. Its manifest
(step 1) then waits for this one's commit and comes after its decoding, before its first
write: only one batch is ever in flight, the manifest names at most one batch, and a crash
replays at most that one. A caught-up batch is landed to its commit before the next is
collected, for its latency.

One run per shard at a time is the orchestrator's job (the Dagster sensor and a tag
concurrency limit), and each run holds the shard's lock (``fence.py``) so that a second lander
cannot land beside it. Shard ``i`` of ``n`` owns the partitions ``p`` with ``p % n == i``.

This module is the loop (collect, land, recover). Its parts live beside it: the manifest in
``checkpoint.py`` (steps 1 and 6, and the replay), the lake and ClickHouse in ``sinks.py``
(3 and 4), dead letters, the commit and Kafka's errors in ``commit.py`` (5), what a batch
reports in ``report.py``, and the kill points of the crash tests in ``crashpoints.py``.
"""

from __future__ import annotations

import ctypes
import gc
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from eventplatform.clickhouse import ClickHouse
from eventplatform.enrich import enrichment_counts
from eventplatform.kafka.clients import (
    committed_offsets,
    make_consumer,
    make_producer,
    watermark_offsets,
)
from eventplatform.kafka.dlq import DEFAULT_MAX_VALUE_BYTES, DeadLetter
from eventplatform.kafka.lag import cached_lag
from eventplatform.land.batches import RowBuilder
from eventplatform.land.cadence import collect_batch
from eventplatform.land.checkpoint import Manifest, offset_ranges
from eventplatform.land.commit import OffsetCommitter, raise_unless_transient, send_dead_letters
from eventplatform.land.crashpoints import CRASH_ENV, crashpoint
from eventplatform.land.fence import ShardLock
from eventplatform.land.lake import OffsetRange, WrittenFile, remove_stale_temporaries
from eventplatform.land.report import BatchReport, RunSummary, cost_events, latencies
from eventplatform.land.sinks import Sinks, Writing, dedup_token, partition_groups
from eventplatform.settings import LandSettings

__all__ = [  # the names landing's callers (and the crash tests) import from here
    "CRASH_ENV",
    "BatchReport",
    "Manifest",
    "RunSummary",
    "ShardLander",
    "crashpoint",
    "dedup_token",
    "offset_ranges",
    "partition_groups",
    "shard_partitions",
]

_MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only


def shard_partitions(partitions: list[int], shard: int, shards: int) -> list[int]:
    """The partitions shard ``shard`` of ``shards`` owns: ``p % shards == shard``."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard must be in 0..{shards - 1}, got {shard}")
    return [p for p in sorted(partitions) if p % shards == shard]


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
        self.sinks = Sinks(rows, lake_dir, clickhouse, settings.clickhouse_partitions_per_insert)
        self.partitions: list[int] = []
        self._opens_at_start = 0  # the engine's open count when the run began
        self.closed_because = ""  # why the batch in hand closed (full, caught_up, max_wait)
        self.log: Callable[[str], None] = lambda line: None
        # Commits go through a client of their own, never the reading consumer (commit.py).
        self.committer = OffsetCommitter(
            lambda: make_consumer(bootstrap, settings.group_id),
            lambda line: self.log(line),
            settings.commit_attempt_timeout_s,
        )

    # -- the loop -------------------------------------------------------------------------

    def run(
        self,
        on_batch: Callable[[BatchReport], None] = lambda report: None,
        should_stop: Callable[[], bool] = lambda: False,
        log: Callable[[str], None] = lambda line: None,
    ) -> RunSummary:
        s = self.settings
        _use_the_c_heap_for_arrow()
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
        self.log = log
        summary = RunSummary()
        try:
            # The embedded engine stays open across the run's batches (handed over between
            # batches when another process waits); the sinks wait for an insert in flight.
            with self.clickhouse.lease(), self.sinks:
                self._opens_at_start = self.clickhouse.opens
                self.rows.warm_up()  # the first batch's one-time costs, before it is in hand
                self.sinks.warm_up()
                with _collector_for_batches():
                    summary = self._loop(consumer, producer, on_batch, should_stop, summary)
                summary.engine_opens = self.clickhouse.opens - self._opens_at_start
                return summary
        finally:
            self.committer.close()
            consumer.close()

    def _loop(
        self,
        consumer: Consumer,
        producer: Producer,
        on_batch: Callable[[BatchReport], None],
        should_stop: Callable[[], bool],
        summary: RunSummary,
    ) -> RunSummary:
        s = self.settings
        started = last_message = time.monotonic()
        first_collect = 0.0
        self.partitions = self._shard_partitions(consumer)
        if not self.partitions:
            summary.stopped_because = "the shard has no partitions"
            return summary
        self._recover(consumer, producer, summary, on_batch)
        starts = self._committed_positions(consumer)
        consumer.assign(starts)
        # A batch whose sinks are still writing while the next one is collected and decoded:
        # only when behind (the last batch closed full), where throughput is what counts; a
        # caught-up batch is finished before the next collect, for its latency.
        in_flight: _InFlight | None = None

        def land_in_flight() -> None:
            nonlocal in_flight
            if in_flight is not None:
                self._finish(self._complete(consumer, producer, in_flight), summary, on_batch)
                in_flight = None

        try:
            while True:
                if in_flight is None:
                    self.clickhouse.renew()  # between batches: another process may want it
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
                    if in_flight is not None:  # nothing new yet: land what is in hand
                        land_in_flight()
                        continue
                    if time.monotonic() - last_message >= s.idle_stop_s:
                        if self._caught_up(consumer, starts):
                            summary.stopped_because = f"idle for {s.idle_stop_s:.0f}s"
                            break
                        last_message = time.monotonic()  # slow to fetch, not idle: go on
                    continue
                last_message = time.monotonic()
                first_collect = first_collect or collecting
                batch = self._prepare(messages, self.closed_because, in_flight is None)
                if in_flight is not None:
                    land_in_flight()
                    self.clickhouse.renew()
                in_flight = self._start(batch)
                if batch.closed_because != "full":
                    land_in_flight()
                summary.busy_s = time.monotonic() - first_collect
                limit = s.max_opens_embedded if self.clickhouse.embedded else 0
                if limit and self.clickhouse.opens - self._opens_at_start >= limit:
                    summary.stopped_because = (
                        f"{limit} engine opens (max_opens_embedded: chdb leaks a little per open)"
                    )
                    break
            if in_flight is not None:  # the batch in hand is landed before the run ends
                land_in_flight()
                summary.busy_s = time.monotonic() - first_collect
        finally:
            if in_flight is not None:  # failing: let its writes stop; its manifest stays
                in_flight.writing.wait_quietly()
        return summary

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

    def _finish(
        self, report: BatchReport, summary: RunSummary, on_batch: Callable[[BatchReport], None]
    ) -> None:
        summary.add(report)
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
        """Up to the batch limits, closed early when caught up (``cadence.py``)."""
        batch = collect_batch(
            consumer,
            self.settings,
            lambda next_offsets: cached_lag(consumer, self.topic, self.partitions, next_offsets),
            lambda error: raise_unless_transient(error, self.log),
        )
        self.closed_because = batch.closed_because
        return batch.messages

    def _land(
        self, consumer: Consumer, producer: Producer, messages: list[Message], replayed: bool
    ) -> BatchReport:
        """Land one batch from start to commit; ``messages`` is emptied once decoded."""
        batch = self._prepare(messages, "replay" if replayed else self.closed_because, True)
        return self._complete(consumer, producer, self._start(batch))

    def _prepare(
        self, messages: list[Message], closed_because: str, manifest_now: bool
    ) -> _Prepared:
        """Decode and enrich. ``manifest_now``: write the batch's manifest first (no other
        batch is in flight); otherwise ``_start`` writes it once the one in flight is
        committed, and this decoding runs beside that batch's sinks. ``messages`` is emptied
        once decoded (to free memory early)."""
        t0 = time.monotonic()
        stages: dict[str, float] = {}
        ranges = offset_ranges(messages)
        if manifest_now:
            self._write_manifest(ranges, stages)
        clock = _StageClock(stages)
        landed_ms = int(time.time() * 1000)
        table, dead = self.rows.build(messages, landed_ms)
        # The rows are all the sinks need: let the batch's Message objects (about as big as
        # the table) go before the sinks' own buffers, and before the next batch is collected.
        messages.clear()
        crashpoint("after_decode")
        clock("decode")
        return _Prepared(ranges, table, dead, closed_because, t0, stages, manifest_now)

    def _write_manifest(self, ranges: list[OffsetRange], stages: dict[str, float]) -> None:
        clock = _StageClock(stages)
        self.manifest.write(ranges)
        crashpoint("after_manifest")
        clock("manifest")

    def _start(self, batch: _Prepared) -> _InFlight:
        """Its manifest if not written yet, then both sinks start writing (in their threads)."""
        if not batch.manifest_written:
            self._write_manifest(batch.ranges, batch.stages)
        return _InFlight(batch, self.sinks.start(batch.table, batch.ranges, batch.stages))

    def _complete(self, consumer: Consumer, producer: Producer, flight: _InFlight) -> BatchReport:
        """Wait for both sinks, send the dead letters, commit, clear the manifest."""
        s, batch = self.settings, flight.batch
        clock = _StageClock(batch.stages)
        files: list[WrittenFile] = flight.writing.result()
        crashpoint("after_clickhouse")
        clock("sinks")

        if batch.dead:
            send_dead_letters(
                producer, self.dlq_topic, batch.dead, s.commit_timeout_s, self.dlq_max_value_bytes
            )
        crashpoint("after_dead_letters")

        ranges = batch.ranges
        self.committer.commit(
            [TopicPartition(self.topic, r.partition, r.last + 1) for r in ranges],
            s.commit_timeout_s,
        )
        crashpoint("after_commit")
        self.manifest.clear()
        clock("commit")

        done_ms = int(time.time() * 1000)
        table = batch.table
        return BatchReport(
            topic=self.topic,
            shard=self.shard,
            kind=self.rows.kind,
            ranges=ranges,
            rows=table.num_rows,
            dead_letters=len(batch.dead),
            files=files,
            lag=self._lag(consumer, ranges),
            latencies_ms=latencies(table, done_ms),
            cost_events=cost_events(table),
            seconds=time.monotonic() - batch.started,
            stage_seconds=batch.stages,
            replayed=batch.closed_because == "replay",
            closed_because=batch.closed_because,
            enrichment=enrichment_counts(table),
        )

    def _lag(self, consumer: Consumer, ranges: list[OffsetRange]) -> int:
        """Behind the batch, from the watermarks the fetches brought (no extra round trip)."""
        done = {r.partition: r.last + 1 for r in ranges}
        return cached_lag(consumer, self.topic, self.partitions, done)

    # -- recovery ------------------------------------------------------------------------

    def _recover(
        self,
        consumer: Consumer,
        producer: Producer,
        summary: RunSummary,
        on_batch: Callable[[BatchReport], None],
    ) -> None:
        """What a crashed run left: its temporary files go, its batch in flight is landed."""
        stale = sum(
            remove_stale_temporaries(self.lake_dir / self.rows.lake_folder, f"{self.topic}+{p}+")
            for p in self.partitions
        )
        if stale:
            self.log(f"removed {stale} temporary files a crashed run left")
        replay = self.manifest.pending(consumer)
        if replay is not None:
            self.log(f"replaying the batch a previous run did not finish: {replay}")
            messages = self._read_exactly(consumer, replay)
            self._finish(self._land(consumer, producer, messages, True), summary, on_batch)

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
                    raise_unless_transient(message.error(), self.log)
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


@dataclass
class _Prepared:
    """A batch decoded and enriched, not yet written anywhere."""

    ranges: list[OffsetRange]
    table: pa.Table
    dead: list[DeadLetter]
    closed_because: str
    started: float  # monotonic, when its landing began
    stages: dict[str, float]
    manifest_written: bool


@dataclass
class _InFlight:
    """A batch whose manifest is written and whose sinks are writing."""

    batch: _Prepared
    writing: Writing


class _StageClock:
    """Adds the time since the previous call to the named stage."""

    def __init__(self, stages: dict[str, float]) -> None:
        self.stages = stages
        self.last = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - self.last
        self.last = now


@contextmanager
def _collector_for_batches() -> Iterator[None]:
    """Python's cyclic garbage collector, tuned for a run of batches, then as it was.

    A batch brings tens of thousands of Kafka ``Message`` objects, which the collector tracks:
    with its default thresholds it ran every 700 of them and now and then walked the whole
    heap (dagster, pyarrow, the enrichers' tables), about a sixth of the landing process's
    CPU in a profile. The batches make no reference cycles worth hunting that often: what
    the run's start-up made is frozen out of the walks, and a young collection runs every
    ``GC_YOUNG_EVERY`` allocations instead of 700."""
    with _GC_RUNS.lock:  # runs in threads of one process: the first sets, the last restores
        if _GC_RUNS.depth == 0:
            _GC_RUNS.saved = gc.get_threshold()
            # (the host process may have frozen its heap itself: then that stays as it is)
            _GC_RUNS.froze = gc.get_freeze_count() == 0
            if _GC_RUNS.froze:
                gc.freeze()
            gc.set_threshold(GC_YOUNG_EVERY, *_GC_RUNS.saved[1:])
        _GC_RUNS.depth += 1
    try:
        yield
    finally:
        with _GC_RUNS.lock:
            _GC_RUNS.depth -= 1
            if _GC_RUNS.depth == 0:
                gc.set_threshold(*_GC_RUNS.saved)
                if _GC_RUNS.froze:
                    gc.unfreeze()


GC_YOUNG_EVERY = 100_000


class _GcRuns:
    """The landing runs of this process inside ``_collector_for_batches``, and the collector's
    thresholds from before the first."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.saved: tuple[int, ...] = gc.get_threshold()
        self.froze = False  # whether the first run froze the heap (then the last unfreezes it)


_GC_RUNS = _GcRuns()


def _use_the_c_heap_for_arrow() -> None:
    """Arrow's buffers (the batch's table, Parquet's pages) from glibc's heap, not mimalloc:
    mimalloc keeps what a batch freed (100-150 MiB of the landing process's peak), while the
    C heap gives it back after each batch (``_return_free_heap``). As fast, measured."""
    if pa.default_memory_pool().backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())


def _return_free_heap() -> None:
    """Give the C heap's free pages back to the system once a batch is done.

    glibc keeps what a batch freed (its Kafka messages, the decoder's columns, librdkafka's
    fetch buffers) in per-thread arenas, and the next batch does not always allocate where
    the last one freed: that was 60-90 MiB of the landing process's peak. It takes milliseconds.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
