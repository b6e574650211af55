"""The two sinks of a landing run: the Parquet lake and ClickHouse, written at once.

Both are idempotent for a replayed batch, which is what lets the checkpoint replay it: the
lake's file names come from the batch's offset ranges (the same files are replaced), and each
ClickHouse insert carries an ``insert_deduplication_token`` derived from them (the table's
deduplication window drops the repeat). The insert is split by month groups, because the
tables are partitioned by month and an insert into more partitions than the server allows
fails whole. A batch of events also records its spend (``land/spend.py``) in the same
ClickHouse session, before its offsets are committed.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from eventplatform.clickhouse import ClickHouse
from eventplatform.land.batches import RowBuilder
from eventplatform.land.crashpoints import crashpoint
from eventplatform.land.lake import OffsetRange, WrittenFile
from eventplatform.land.spend import ensure_backfilled, record_spend, serialized


class Sinks:
    """Writes a batch's rows to the lake and ClickHouse in parallel (both release the GIL).

    Use it as a context manager around a run: it owns the two threads that write (one per
    sink), so the caller's thread is free to collect and decode the next batch meanwhile.
    """

    def __init__(
        self,
        rows: RowBuilder,
        lake_dir: Path,
        clickhouse: ClickHouse,
        partitions_per_insert: int,
    ) -> None:
        self.rows = rows
        self.lake_dir = lake_dir
        self.clickhouse = clickhouse
        self.partitions_per_insert = partitions_per_insert
        self._inserter: ThreadPoolExecutor | None = None
        self._lake_writer: ThreadPoolExecutor | None = None

    def __enter__(self) -> Sinks:
        self._inserter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self._lake_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lake")
        return self

    def __exit__(self, *exc_info: object) -> None:
        for pool in (self._inserter, self._lake_writer):
            if pool is not None:
                pool.shutdown(wait=True)  # never leave a write running behind the run
        self._inserter = self._lake_writer = None

    def warm_up(self) -> None:
        """Open the engine and do the spend's one-time backfill now, not in the first batch's
        time (a run starts when there is something to land: its events would wait)."""
        with self.clickhouse.session() as client:
            if self.rows.clickhouse_table == "events":
                with serialized(self.clickhouse, self.lake_dir / "_landing" / "spend.lock"):
                    ensure_backfilled(client, self.clickhouse.database)

    def start(
        self, table: pa.Table, ranges: list[OffsetRange], stages: dict[str, float]
    ) -> Writing:
        """Start writing the batch to both sinks at once, each in its own thread. Adds
        ``parquet``, ``clickhouse`` and ``spend`` to ``stages`` (seconds) as they finish."""
        if not table.num_rows:
            return Writing(None, None)
        if self._inserter is None or self._lake_writer is None:
            raise RuntimeError("Sinks.start outside of `with sinks:`")
        inserting = self._inserter.submit(self.insert_clickhouse, table, ranges, stages)
        lake = self._lake_writer.submit(self.write_lake, table, ranges, stages)
        return Writing(lake, inserting)

    def write_lake(
        self, table: pa.Table, ranges: list[OffsetRange], stages: dict[str, float]
    ) -> list[WrittenFile]:
        started = time.perf_counter()
        files = self.rows.write_lake(self.lake_dir, table, ranges)
        stages["parquet"] = stages.get("parquet", 0.0) + time.perf_counter() - started
        crashpoint("after_parquet")
        return files

    def insert_clickhouse(
        self, table: pa.Table, ranges: list[OffsetRange], stages: dict[str, float]
    ) -> None:
        """One insert per group of at most ``partitions_per_insert`` months, each with its
        own token derived from the ranges (a replay forms the same groups)."""
        started = time.perf_counter()
        limit = self.partitions_per_insert
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
            if self.rows.clickhouse_table == "events":  # spend, before the offsets commit
                started = time.perf_counter()
                with serialized(self.clickhouse, self.lake_dir / "_landing" / "spend.lock"):
                    record_spend(client, self.clickhouse.database, table, token)
                stages["spend"] = stages.get("spend", 0.0) + time.perf_counter() - started


class Writing:
    """A batch on its way into both sinks (``Sinks.start``)."""

    def __init__(self, lake: Future[list[WrittenFile]] | None, insert: Future[None] | None):
        self.lake, self.insert = lake, insert

    def wait_quietly(self) -> None:
        """Until both writes have stopped, whatever their outcome (a run that is failing)."""
        wait([f for f in (self.lake, self.insert) if f is not None])

    def result(self) -> list[WrittenFile]:
        """The lake's files once both sinks hold the batch; raises if either failed (after
        both have stopped: no write is left running behind a failure)."""
        wait([f for f in (self.lake, self.insert) if f is not None])
        if self.insert is not None:
            self.insert.result()
        return self.lake.result() if self.lake is not None else []


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
