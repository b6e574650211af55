"""The Parquet lake: hive-partitioned files with names that say exactly what they hold.

Layout (``lake_dir`` is ``$EP_DATA_DIR/lake`` by default)::

    events/event_date=2026-11-23/event_hour=9/events.raw+3+1200-1899.parquet
    dead_letters/dead_date=2026-11-23/events.dlq+0+40-57.parquet

A file name carries the source topic, partition and the *batch's* offset range for that
partition (a batch that spans two hours writes two files with the same range, each holding
its hour's rows).

Late events (``event_ts`` more than ``HOURLY_HORIZON_H`` hours before their ``received_ts``:
history replays, devices that were offline) go to one file per partition and *day* in the
folder ``event_hour=-1`` of their date, so a batch spread over years writes at most a file per
day, not one per distinct hour. ``event_hour`` is a folder hint for pruning; the hour of a
row is in ``event_ts``. The split depends only on each event's own timestamps, never on the
clock of the run, so a replayed batch writes the same files.

Names are deterministic, so a batch replayed after a crash rewrites the
same files instead of adding new ones: the lake holds every event once. Each file is written
to a hidden temporary name in its folder and renamed, so readers never see half a file.

A batch's files are written at once (a few threads: Parquet encoding and fsync release the
GIL). A small file (under ``SMALL_FILE_ROWS`` rows: the sub-second batches of a caught-up
shard) is LZ4-compressed, a larger one zstd: for a few hundred rows zstd's fixed cost per
column doubles the write for 20 % fewer bytes, and compaction (``compact.py``) rewrites an
hour's small files into large zstd ones anyway.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from eventplatform.files import fsync_folder

EVENTS_DIR = "events"
DEAD_LETTERS_DIR = "dead_letters"
TMP_PREFIX = ".tmp-"
MS_PER_HOUR = 3_600_000
HOURLY_HORIZON_H = 48  # events older than this (against received_ts) are filed by day
LATE_HOUR = -1  # the event_hour folder of late events
_LATE = 1 << 40  # bucket keys at or above this are late days (hour of midnight + _LATE)
SMALL_FILE_ROWS = 5_000  # fewer rows: LZ4, more: zstd (see above)
_WRITERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lake-writer")


@dataclass(frozen=True)
class OffsetRange:
    """The offsets of one partition that a batch took, both ends included."""

    topic: str
    partition: int
    first: int
    last: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    def file_stem(self) -> str:
        return f"{self.topic}+{self.partition}+{self.first}-{self.last}"


@dataclass(frozen=True)
class LakeFile:
    """A lake file as its name describes it: the rows of ``topic`` / ``partition`` with
    offsets from ``first`` to ``last`` that belong to its folder (a batch's file, or a
    compacted file of several batches: see ``compact.py``)."""

    path: Path
    topic: str
    partition: int
    first: int
    last: int
    bytes: int
    mtime: float


def superseded(files: Iterable[LakeFile]) -> dict[Path, LakeFile]:
    """The files (of one folder) whose offset range lies inside another's of the same topic
    and partition, each with the file that holds it: a superseded file's rows are a subset of
    that file's rows (a row's folder depends only on its event). One sort, not a comparison of
    every pair: a folder of an open hour can hold thousands of batch files."""
    result: dict[Path, LakeFile] = {}
    by_partition: dict[tuple[str, int], list[LakeFile]] = {}
    for f in files:
        by_partition.setdefault((f.topic, f.partition), []).append(f)
    for group in by_partition.values():
        cover: LakeFile | None = None  # the widest-reaching file so far (smallest first)
        for f in sorted(group, key=lambda f: (f.first, -f.last)):
            if cover is not None and f.last <= cover.last:
                result[f.path] = cover
            else:
                cover = f
    return result


_NAME = re.compile(
    r"^(?P<topic>[A-Za-z0-9._-]+)\+(?P<p>\d+)\+(?P<first>\d+)-(?P<last>\d+)\.parquet$"
)


def lake_file(path: Path) -> LakeFile | None:
    """The file's lineage from its name; None for a temporary or foreign file (or one that
    was just removed)."""
    match = _NAME.match(path.name)
    if match is None:
        return None
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return LakeFile(
        path,
        match["topic"],
        int(match["p"]),
        int(match["first"]),
        int(match["last"]),
        stat.st_size,
        stat.st_mtime,
    )


def current_files(folder: Path) -> list[LakeFile]:
    """The files of one lake folder a reader reads: every landed file except those a
    compacted file supersedes (they hold a subset of its rows and are deleted later), so a
    reader never sees a row twice, during or after compaction. Sorted by name."""
    files = [f for p in folder.glob("*.parquet") if (f := lake_file(p)) is not None]
    gone = superseded(files)
    return sorted((f for f in files if f.path not in gone), key=lambda f: f.path.name)


def current_paths(root: Path) -> list[Path]:
    """What a reader of the lake under ``root`` reads, sorted: the current files
    (:func:`current_files`) of every folder, and any Parquet file whose name carries no
    offsets (not landed here, never compacted); never a temporary."""
    if not root.is_dir():
        return []
    paths = [p for p in root.rglob("*.parquet") if not p.name.startswith((TMP_PREFIX, "."))]
    folders = {p.parent for p in paths}
    current = {f.path for folder in folders for f in current_files(folder)}
    return sorted(p for p in paths if p in current or not _NAME.match(p.name))


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    rows: int
    bytes: int


def write_events(
    lake_dir: Path, table: pa.Table, ranges: Iterable[OffsetRange]
) -> list[WrittenFile]:
    """Write landed events (``landed_schema()``) as one file per partition, date and hour
    (late events: per partition and date)."""
    hours = _hours(table, "event_ts")
    late = hours < _hours(table, "received_ts") - HOURLY_HORIZON_H
    buckets = np.where(late, (hours // 24) * 24 + _LATE, hours)
    return _write_grouped(lake_dir / EVENTS_DIR, table, ranges, buckets, _event_folder)


def _event_folder(bucket: int) -> str:
    if bucket >= _LATE:
        return f"event_date={_date(bucket - _LATE)}/event_hour={LATE_HOUR}"
    return f"event_date={_date(bucket)}/event_hour={bucket % 24}"


def write_dead_letters(
    lake_dir: Path, table: pa.Table, ranges: Iterable[OffsetRange]
) -> list[WrittenFile]:
    """Write landed dead letters (``DEAD_LETTER_SCHEMA``), one file per partition and day."""
    days = (_hours(table, "dead_ts") // 24) * 24
    return _write_grouped(
        lake_dir / DEAD_LETTERS_DIR, table, ranges, days, lambda h: f"dead_date={_date(h)}"
    )


def _hours(table: pa.Table, column: str) -> np.ndarray:
    """Hours since the epoch (UTC) of a timestamp column."""
    ms = pc.cast(pc.cast(table.column(column), pa.timestamp("ms")), pa.int64())
    return pc.divide(ms, MS_PER_HOUR).to_numpy(zero_copy_only=False)


def _date(hour_since_epoch: int) -> str:
    return str(np.datetime64(int(hour_since_epoch), "h").astype("datetime64[D]"))


def _write_grouped(root, table, ranges, hours, folder_of) -> list[WrittenFile]:
    """One file per source partition and time bucket; ``ranges`` are of one topic."""
    by_partition = {r.partition: r for r in ranges}
    if len({r.topic for r in by_partition.values()}) > 1:
        raise ValueError("a batch comes from one topic")
    files = [
        (root / folder_of(hour) / f"{by_partition[partition].file_stem()}.parquet", rows)
        for partition, hour, rows in _groups(table, hours)
    ]
    if len(files) == 1:
        written = [_write_atomically(*files[0])]
    else:  # all of them, even when one fails: each cleans up its own temporary file
        futures = [_WRITERS.submit(_write_atomically, path, part) for path, part in files]
        wait(futures)
        written = [future.result() for future in futures]
    sync_folders({f.path.parent for f in written}, root.parent)
    return written


def _groups(table: pa.Table, hours: np.ndarray) -> Iterator[tuple[int, int, pa.Table]]:
    """(partition, hour, rows) for each source partition and time bucket, in that order, the
    rows in their batch order: one stable sort and one ``take`` (none when the batch is in
    order already), then zero-copy slices. A filter per file read the whole table per file."""
    if not table.num_rows:
        return
    partitions = table.column("kafka_partition").to_numpy(zero_copy_only=False)
    order = np.lexsort((hours, partitions))  # stable: by partition, then hour
    if not np.array_equal(order, np.arange(len(order))):
        table, partitions, hours = table.take(pa.array(order)), partitions[order], hours[order]
    changes = np.flatnonzero((np.diff(partitions) != 0) | (np.diff(hours) != 0)) + 1
    starts, ends = np.concatenate(([0], changes)), np.concatenate((changes, [len(partitions)]))
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        yield int(partitions[start]), int(hours[start]), table.slice(start, end - start)


def _write_atomically(path: Path, table: pa.Table) -> WrittenFile:
    """Write to a temporary name, fsync, rename: after a power loss the file is whole or absent
    (the rename itself is made durable by :func:`sync_folders`, before the offsets commit)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        with open(tmp, "wb") as f:
            codec = "lz4" if table.num_rows < SMALL_FILE_ROWS else "zstd"
            pq.write_table(table, f, compression=codec, write_statistics=True)
            f.flush()
            os.fsync(f.fileno())
        size = tmp.stat().st_size
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return WrittenFile(path, table.num_rows, size)


def sync_folders(folders: Iterable[Path], top: Path) -> None:
    """fsync each folder and its parents up to ``top``: renames into them, and the folders
    just created for them, survive a power loss. Each folder once, however many files."""
    done: set[Path] = set()
    for folder in folders:
        while folder not in done:
            done.add(folder)
            fsync_folder(folder)
            if folder == top or top not in folder.parents:
                break
            folder = folder.parent


def remove_stale_temporaries(root: Path, stem_prefix: str = "") -> int:
    """Temporary files a crashed writer left behind (never visible to readers).

    ``stem_prefix`` (``"<topic>+<partition>+"``) limits it to one partition's files, so a run
    never removes what another shard's run is writing right now.
    """
    removed = 0
    for tmp in root.rglob(f"{TMP_PREFIX}*-{stem_prefix}*"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed
