"""What a landing run reports: one ``BatchReport`` per micro-batch, and the run's summary.

The orchestrator turns the reports into materializations; the CLI prints them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from eventplatform.land.lake import OffsetRange, WrittenFile

COST_EVENT_TYPES = pa.array(["impression", "ad_click", "conversion"])


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
    enrichment: dict = field(default_factory=dict)  # counts and versions (enrich/pipeline.py)

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

    def add(self, report: BatchReport) -> None:
        self.batches += 1
        self.rows += report.rows
        self.dead_letters += report.dead_letters
        self.replayed_batches += report.replayed


def latencies(table: pa.Table, done_ms: int) -> np.ndarray | None:
    """Per event, milliseconds from ``received_ts`` to ``done_ms`` (None for dead letters)."""
    if "received_ts" not in table.column_names or table.num_rows == 0:
        return None
    received = pc.cast(pc.cast(table.column("received_ts"), pa.timestamp("ms")), pa.int64())
    return done_ms - received.to_numpy(zero_copy_only=False)


def _percentile(values: np.ndarray | None, q: float) -> float | None:
    return None if values is None else float(np.percentile(values, q))


def cost_events(table: pa.Table) -> int:
    """The batch's events that can change a campaign's spend."""
    if "event_type" not in table.column_names or table.num_rows == 0:
        return 0
    return int(
        pc.sum(pc.is_in(table.column("event_type"), value_set=COST_EVENT_TYPES)).as_py() or 0
    )
