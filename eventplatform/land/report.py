"""What a landing run reports: one ``BatchReport`` per micro-batch, and the run's summary.

The orchestrator turns the reports into materializations; the CLI prints them.
"""

from __future__ import annotations

import time
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
    closed_because: str = ""  # full (behind), caught_up, max_wait, replay: see cadence.py
    batch_ranges: list[list[OffsetRange]] = field(default_factory=list)  # merged: each batch's
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

    @property
    def batches(self) -> int:
        return len(self.batch_ranges) or 1


class ReportWindow:
    """Batches reported together: one report per ``every_s`` for a run whose batches come
    faster, so the orchestrator's event log grows by the interval, not by the batch rate.

    The first batch of a window is reported at once when the last report is older than
    ``every_s`` (a run of large, slow batches reports each); the others wait for the next batch
    after the interval, or for :meth:`flush` at the end of the run. ``every_s`` 0: each batch.
    """

    def __init__(self, every_s: float, clock=time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self.pending: list[BatchReport] = []
        self.reported_at = -float("inf")

    def add(self, report: BatchReport) -> BatchReport | None:
        """The merged report to record now, or None (kept for later)."""
        self.pending.append(report)
        if self.clock() - self.reported_at < self.every_s:
            return None
        return self.flush()

    def flush(self) -> BatchReport | None:
        if not self.pending:
            return None
        batch, self.pending = self.pending, []
        self.reported_at = self.clock()
        return batch[0] if len(batch) == 1 else merge_reports(batch)


def merge_reports(reports: list[BatchReport]) -> BatchReport:
    """One report for consecutive batches of one shard: per partition the first batch's first
    offset to the last batch's last (a shard's batches follow each other), and each batch's
    own ranges in ``batch_ranges``."""
    bounds: dict[int, OffsetRange] = {}
    for report in reports:
        for r in report.ranges:
            seen = bounds.get(r.partition)
            bounds[r.partition] = (
                r if seen is None else OffsetRange(r.topic, r.partition, seen.first, r.last)
            )
    latencies_ms = [r.latencies_ms for r in reports if r.latencies_ms is not None]
    stages: dict[str, float] = {}
    for report in reports:
        for stage, seconds in report.stage_seconds.items():
            stages[stage] = stages.get(stage, 0.0) + seconds
    last = reports[-1]
    return BatchReport(
        topic=last.topic,
        shard=last.shard,
        kind=last.kind,
        ranges=[bounds[p] for p in sorted(bounds)],
        rows=sum(r.rows for r in reports),
        dead_letters=sum(r.dead_letters for r in reports),
        files=[f for r in reports for f in r.files],
        lag=last.lag,
        latencies_ms=np.concatenate(latencies_ms) if latencies_ms else None,
        cost_events=sum(r.cost_events for r in reports),
        seconds=sum(r.seconds for r in reports),
        stage_seconds=stages,
        replayed=any(r.replayed for r in reports),
        closed_because=last.closed_because,
        batch_ranges=[r.ranges for r in reports],
        enrichment=_merged_enrichment(reports),
    )


def _merged_enrichment(reports: list[BatchReport]) -> dict:
    """The batches' enrichment counts summed; the versions of the last batch."""
    counts: dict[str, int] = {}
    for report in reports:
        for name, value in report.enrichment.get("counts", {}).items():
            counts[name] = counts.get(name, 0) + value
    merged = dict(reports[-1].enrichment)
    if counts:
        merged["counts"] = counts
    return merged


@dataclass
class RunSummary:
    batches: int = 0
    rows: int = 0
    dead_letters: int = 0
    replayed_batches: int = 0
    busy_s: float = 0.0  # from the first batch's collection to the last batch's commit
    stopped_because: str = ""
    engine_opens: int = 0  # times the run opened the embedded engine (1 unless handed over)
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
