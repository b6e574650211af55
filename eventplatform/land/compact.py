"""Lake compaction: a closed hour's small batch files rewritten into few, without a reader
ever seeing a row twice or missing one.

Landing writes one file per batch, source partition and hour (``lake.py``): sub-second
batches make thousands of small files an hour. Once an hour is closed (its end plus
``compact_grace_s``), this rewrites each source partition's files of that folder into files
of up to ``compact_target_bytes``. The lineage stays in the names: a compacted file is named,
like a batch file, ``<topic>+<partition>+<first>-<last>.parquet``, from its inputs' first and
last offsets, and every row keeps its ``kafka_partition`` / ``kafka_offset``.

Why readers never see a row twice: a file whose range lies inside another file's range of
the same topic and partition in the same folder is *superseded* (it holds a subset of the same
rows, since a row's folder depends only on the event's own timestamps), and readers read
``lake.current_files``, which leaves superseded files out. The compacted file appears by one
atomic rename; before it, readers see the inputs, after it, the compacted file. Why none is
missed: the compacted file holds every row of its inputs, and a superseded file is deleted only
``compact_delete_after_s`` after it was superseded, so a reader that listed the folder before
the rename can still read what it listed.

Exactly once through crashes: only files of committed batches are compacted (a batch in
flight may be replayed; its files stay as they are); the compacted file is written under a
hidden temporary name, fsynced and renamed, then its folder is fsynced; a crash before the
rename leaves a temporary file the next pass removes, a crash after it leaves superseded inputs
the next pass deletes. A replay that rewrites a batch file already compacted writes a file the
compacted one supersedes. Each pass starts from what is on disk, so it is idempotent.

Tenant isolation: one customer's history replay writes late files (``event_hour=-1``, one per
partition and day) into many day folders. Each pass compacts the hourly folders first, newest
first, then late and dead-letter folders, and stops after ``compact_max_input_files`` inputs:
a replay's folders wait for the next pass, they never delay the others' hours.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from confluent_kafka import Consumer, TopicPartition

from eventplatform.kafka.clients import committed_offsets, make_consumer
from eventplatform.kafka.lag import topic_partitions
from eventplatform.land.crashpoints import crashpoint
from eventplatform.land.lake import (
    DEAD_LETTERS_DIR,
    EVENTS_DIR,
    LATE_HOUR,
    LakeFile,
    current_files,
    lake_file,
    superseded,
    sync_folders,
)
from eventplatform.settings import LandSettings, Settings

COMPACT_TMP_PREFIX = ".compacting-"  # not the lander's ``.tmp-``: a lander's start removes those
ROW_GROUP_ROWS = 128 * 1024
_HOUR = re.compile(r"event_date=(\d{4}-\d{2}-\d{2})/event_hour=(-?\d+)$")
_DEAD_DAY = re.compile(r"dead_date=(\d{4}-\d{2}-\d{2})$")


class CompactionBusy(RuntimeError):
    """Another pass is compacting this lake."""


@dataclass(frozen=True)
class CompactionPolicy:
    target_bytes: int = 128 * 1024 * 1024
    grace_s: float = 300.0  # after an hour (a day for dead letters) ends, before it is compacted
    delete_after_s: float = 900.0  # a superseded file stays this long for readers that listed it
    max_input_files: int = 20_000  # per pass
    open_min_files: int = 64  # an hour still open: merge only runs of at least this many


@dataclass
class CompactionReport:
    """What one pass did."""

    folders: int = 0  # folders with at least one file written
    inputs: int = 0  # files merged
    outputs: int = 0  # files written
    deleted: int = 0  # superseded files removed
    stale_temporaries: int = 0
    input_bytes: int = 0
    output_bytes: int = 0
    deferred_folders: int = 0  # left for the next pass (the per-pass budget ran out)
    written: list[Path] = field(default_factory=list, repr=False)


def compact_lake(
    lake_dir: Path,
    committed: Callable[[str], Mapping[int, int]],
    policy: CompactionPolicy = CompactionPolicy(),
    now: datetime | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> CompactionReport:
    """One pass over the lake. ``committed(topic)`` is the landing group's committed offsets
    (the next to land) per partition of ``topic``; files of batches not yet committed, or of a
    partition without a committed offset, are left as they are."""
    lock_path = lake_dir / "_landing" / "compaction.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        try:  # one pass at a time: two would do the same work twice
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CompactionBusy(f"another compaction pass holds {lock_path}") from None
        return _compact(lake_dir, committed, policy, now or datetime.now(UTC), log)


def _compact(
    lake_dir: Path,
    committed_of: Callable[[str], Mapping[int, int]],
    policy: CompactionPolicy,
    now: datetime,
    log: Callable[[str], None],
) -> CompactionReport:
    report = CompactionReport()
    topics: dict[str, Mapping[int, int]] = {}  # asked once per topic and pass

    def committed(topic: str, partition: int) -> int | None:
        if topic not in topics:
            topics[topic] = committed_of(topic)
        return topics[topic].get(partition)

    budget = policy.max_input_files
    for folder in _folders_in_order(lake_dir):
        files = [f for p in folder.glob("*.parquet") if (f := lake_file(p)) is not None]
        report.stale_temporaries += _remove_stale(folder, policy.delete_after_s)
        report.deleted += _delete_superseded(files, policy.delete_after_s)
        min_run = 2 if _closed(folder, now, policy.grace_s) else policy.open_min_files
        runs = _runs(folder, committed, policy, time.time(), min_run)
        if not runs:
            continue
        taken = []
        for run in runs:  # the first run of a pass is taken however long: no folder starves
            if len(run) > budget and (report.inputs or taken):
                break
            taken.append(run)
            budget -= len(run)
        if len(taken) < len(runs):
            report.deferred_folders += 1
        runs = taken
        if not runs:
            continue
        inputs = sum(len(run) for run in runs)
        for run in runs:
            written = _merge(folder, run)
            report.inputs += len(run)
            report.input_bytes += sum(f.bytes for f in run)
            report.outputs += 1
            report.output_bytes += written.stat().st_size
            report.written.append(written)
        sync_folders([folder], folder)
        report.folders += 1
        log(f"{folder.relative_to(lake_dir)}: {inputs} files into {len(runs)}")
    return report


def _folders_in_order(lake_dir: Path) -> list[Path]:
    """Hourly event folders newest first, then late-event and dead-letter folders."""
    hourly, late = [], []
    for folder in (lake_dir / EVENTS_DIR).glob("event_date=*/event_hour=*"):
        match = _HOUR.search(folder.as_posix())
        if match is None or not folder.is_dir():
            continue
        (late if int(match.group(2)) == LATE_HOUR else hourly).append(folder)
    dead = [f for f in (lake_dir / DEAD_LETTERS_DIR).glob("dead_date=*") if f.is_dir()]
    key = _period_end_key
    return sorted(hourly, key=key, reverse=True) + sorted(late + dead, key=key, reverse=True)


def _period_end_key(folder: Path) -> datetime:
    return _period_end(folder) or datetime.max.replace(tzinfo=UTC)


def _period_end(folder: Path) -> datetime | None:
    """When the folder's hour (a dead-letter folder: day) ends; None for a late-event folder,
    whose files may come at any time (a history replay)."""
    posix = folder.as_posix()
    if match := _HOUR.search(posix):
        hour = int(match.group(2))
        if hour == LATE_HOUR:
            return None
        day = datetime.fromisoformat(match.group(1)).replace(tzinfo=UTC)
        return day + timedelta(hours=hour + 1)
    if match := _DEAD_DAY.search(posix):
        return datetime.fromisoformat(match.group(1)).replace(tzinfo=UTC) + timedelta(days=1)
    return None


def _closed(folder: Path, now: datetime, grace_s: float) -> bool:
    end = _period_end(folder)
    return end is None or now >= end + timedelta(seconds=grace_s)


def _runs(
    folder: Path,
    committed: Callable[[str, int], int | None],
    policy: CompactionPolicy,
    now_s: float,
    min_run: int,
) -> list[list[LakeFile]]:
    """Per topic and partition, runs of neighbouring small files (in offset order among the
    current files, so a compacted range holds no file that is not merged into it), each run
    up to ``target_bytes``; only runs of ``min_run`` files or more (an open hour's runs are
    long, so its files are rewritten a few times at most before they reach the target). A
    late-event folder's files are taken once they are ``grace_s`` old (its day has no end)."""
    late = _period_end(folder) is None
    by_partition: dict[tuple[str, int], list[LakeFile]] = {}
    for f in current_files(folder):
        by_partition.setdefault((f.topic, f.partition), []).append(f)
    runs: list[list[LakeFile]] = []
    for key, files in sorted(by_partition.items()):
        next_offset = committed(*key)
        run: list[LakeFile] = []
        size = 0
        for f in sorted(files, key=lambda f: f.first):
            eligible = (
                next_offset is not None
                and f.last < next_offset
                and f.bytes < policy.target_bytes
                and not (late and now_s - f.mtime < policy.grace_s)
            )
            if not eligible or size + f.bytes > policy.target_bytes:
                if len(run) >= min_run:
                    runs.append(run)
                run, size = ([f], f.bytes) if eligible else ([], 0)
                continue
            run.append(f)
            size += f.bytes
        if len(run) >= min_run:
            runs.append(run)
    return runs


def _merge(folder: Path, run: list[LakeFile]) -> Path:
    """The run's rows in one file, in offset order, appearing by one atomic rename."""
    first, last = run[0], run[-1]
    target = folder / f"{first.topic}+{first.partition}+{first.first}-{last.last}.parquet"
    tmp = folder / f"{COMPACT_TMP_PREFIX}{uuid.uuid4().hex[:8]}-{target.name}"
    schema = _common_schema([pq.read_schema(f.path) for f in run])
    try:
        with open(tmp, "wb") as sink:
            with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
                pending: list[pa.RecordBatch] = []
                rows = 0
                for f in run:
                    for batch in pq.ParquetFile(f.path).iter_batches(batch_size=ROW_GROUP_ROWS):
                        pending.append(_conform(batch, schema))
                        rows += batch.num_rows
                        if rows >= ROW_GROUP_ROWS:
                            writer.write_table(pa.Table.from_batches(pending, schema))
                            pending, rows = [], 0
                if pending:
                    writer.write_table(pa.Table.from_batches(pending, schema))
            sink.flush()
            os.fsync(sink.fileno())
        crashpoint("compact_before_rename")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    crashpoint("compact_after_rename")
    return target


def _common_schema(schemas: Iterable[pa.Schema]) -> pa.Schema:
    """One schema for files landed by different versions (a column added later is null in
    older files), as readers' ``union_by_name`` sees them."""
    return pa.unify_schemas(list(schemas), promote_options="permissive")


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    if batch.schema.equals(schema):
        return batch
    columns = [
        batch.column(name).cast(schema.field(name).type)
        if name in batch.schema.names
        else pa.nulls(batch.num_rows, schema.field(name).type)
        for name in schema.names
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _delete_superseded(files: list[LakeFile], delete_after_s: float) -> int:
    """Remove files another file of the folder supersedes, once that one is old enough."""
    deleted = 0
    now_s = time.time()
    for path, cover in superseded(files).items():
        if now_s - cover.mtime >= delete_after_s:
            path.unlink(missing_ok=True)
            deleted += 1
    return deleted


def _remove_stale(folder: Path, older_than_s: float) -> int:
    """Temporary files of a pass that crashed (old enough that no pass is writing them)."""
    removed = 0
    now_s = time.time()
    for tmp in folder.glob(f"{COMPACT_TMP_PREFIX}*"):
        try:
            if now_s - tmp.stat().st_mtime >= older_than_s:
                tmp.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def group_positions(bootstrap: str, group_id: str, timeout_s: float = 30) -> GroupPositions:
    """``committed`` for :func:`compact_lake`: the group's committed offsets, asked of Kafka
    once per topic (close it after the pass)."""
    return GroupPositions(make_consumer(bootstrap, group_id), timeout_s)


class GroupPositions:
    def __init__(self, consumer: Consumer, timeout_s: float) -> None:
        self.consumer = consumer
        self.timeout_s = timeout_s

    def __call__(self, topic: str) -> dict[int, int]:
        try:
            partitions = topic_partitions(self.consumer, topic, self.timeout_s)
        except RuntimeError:  # a topic since deleted: nothing of it is known to be committed
            return {}
        tps = [TopicPartition(topic, p) for p in partitions]
        return {
            tp.partition: tp.offset
            for tp in committed_offsets(self.consumer, tps, self.timeout_s)
            if tp.offset >= 0
        }

    def close(self) -> None:
        self.consumer.close()


def policy_from(settings: LandSettings) -> CompactionPolicy:
    """The compaction policy the settings (``EP_LAND_COMPACT_*``) describe."""
    return CompactionPolicy(
        target_bytes=settings.compact_target_bytes,
        grace_s=settings.compact_grace_s,
        delete_after_s=settings.compact_delete_after_s,
        max_input_files=settings.compact_max_input_files,
        open_min_files=settings.compact_open_min_files,
    )


def compact_platform_lake(
    settings: Settings, log: Callable[[str], None] = lambda line: None
) -> CompactionReport:
    """One pass over the platform's lake, against the landing group's committed offsets."""
    committed = group_positions(settings.kafka.bootstrap, settings.land.group_id)
    try:
        return compact_lake(settings.lake_dir, committed, policy_from(settings.land), log=log)
    finally:
        committed.close()
