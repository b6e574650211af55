"""The landing run: `eventplatform.land` landing one shard of a topic in micro-batches.

Each micro-batch is reported as materializations of `events_lake` and `events_clickhouse`
(or `dead_letters`) and, when the batch carried cost-bearing events, the budget controller
runs right away so a pause reaches ad servers within seconds. The sensors that start these
runs are made by the landing component (``component.py``, declared in ``landed/*/defs.yaml``).
"""

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    Config,
    DagsterRunStatus,
    JobDefinition,
    MetadataValue,
    OpExecutionContext,
    ResourceParam,
    in_process_executor,
    job,
    op,
)

from eventplatform.budgets.signals import BudgetController
from eventplatform.defs.budgets.metadata import budget_metadata
from eventplatform.defs.resources import ClickHouseResource, KafkaResource
from eventplatform.land.lander import BatchReport
from eventplatform.land.report import ReportWindow
from eventplatform.land.sources import BatchPolicy, Source, build_lander, sources
from eventplatform.settings import Settings


class LandConfig(Config):
    """Which shard of which source. ``source`` alone names a platform source (raw, overflow,
    dlq, from settings); a declared source (the landing component) sends the rest too."""

    source: str = "raw"
    shard: int = 0
    topic: str | None = None
    shards: int | None = None
    kind: str | None = None  # events | dead_letters
    batch_max_records: int | None = None
    batch_max_bytes: int | None = None
    batch_max_wait_s: float | None = None
    updates: list[str] | None = None  # asset keys ("a/b" for a prefixed key) each batch updates

    def to_source(self, settings: Settings) -> Source:
        if self.topic is None:
            return sources(settings)[self.source]
        return Source(
            name=self.source,
            topic=self.topic,
            shards=self.shards or 1,
            kind=self.kind or "events",
            priority=0,
            batch=BatchPolicy(self.batch_max_records, self.batch_max_bytes, self.batch_max_wait_s),
        )


def default_updates(kind: str) -> list[str]:
    """The platform's landed assets for a kind of rows."""
    return ["events_lake", "events_clickhouse"] if kind == "events" else ["dead_letters"]


def _batch_metadata(report: BatchReport) -> dict:
    per_s = report.messages / report.seconds if report.seconds > 0 else 0.0
    metadata = {
        "topic": report.topic,
        "shard": report.shard,
        "messages": report.messages,
        "rows": report.rows,
        "dead_letters": report.dead_letters,
        "parquet_bytes": report.parquet_bytes,
        "files": len(report.files),
        "lag": report.lag,
        "messages_per_s": round(per_s, 1),
        "offsets": ", ".join(f"p{r.partition}: {r.first}-{r.last}" for r in report.ranges),
        "replayed": report.replayed,
        "batches": report.batches,
        "closed_because": report.closed_because,
    }
    if report.batch_ranges:  # several batches in one record: each one's offsets
        metadata["batch_offsets"] = MetadataValue.md(
            "\n".join(
                "- " + ", ".join(f"p{r.partition}: {r.first}-{r.last}" for r in ranges)
                for ranges in report.batch_ranges
            )
        )
    counts = report.enrichment.get("counts", {})
    for name, value in counts.items():  # nulls left by failed lookups, bots (enrich/)
        metadata[f"enrich_{name}"] = value
    for name, value in report.enrichment.get("versions", {}).items():
        metadata[f"enrich_version_{name}"] = value
    if report.latency_p99_ms is not None:
        metadata["latency_p50_ms"] = round(report.latency_p50_ms or 0.0, 1)
        metadata["latency_p99_ms"] = round(report.latency_p99_ms, 1)
    return metadata


class StopRequest:
    """Stop between batches: on SIGINT/SIGTERM (how Dagster terminates a run) or CANCELING."""

    def __init__(self, context: OpExecutionContext, poll_s: float = 5.0) -> None:
        self.context = context
        self.poll_s = poll_s
        self.signalled: int | None = None
        self._checked = time.monotonic()

    def __call__(self) -> bool:
        if self.signalled is not None:
            return True
        if time.monotonic() - self._checked >= self.poll_s:
            self._checked = time.monotonic()
            return self._canceling()
        return False

    @contextmanager
    def deferring_signals(self) -> Iterator[None]:
        """Hold SIGINT/SIGTERM until the batch in hand is landed (then see below)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def note(signum, frame) -> None:
            self.signalled = signum

        for s in previous:
            signal.signal(s, note)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        # Terminated from the UI (the run is CANCELING): let Dagster see the interrupt, so the
        # run ends as canceled. A plain SIGTERM/SIGINT (the platform shutting down) ends the
        # run normally: it stopped where it should, between batches.
        if self.signalled is not None and self._canceling():
            os.kill(os.getpid(), self.signalled)

    def _canceling(self) -> bool:
        run = self.context.instance.get_run_by_id(self.context.run_id)
        return run is not None and run.status == DagsterRunStatus.CANCELING


@op(
    description="Lands one shard of a topic in micro-batches until idle, out of time, or "
    "terminated (between batches).",
)
def land_shard(
    context: OpExecutionContext,
    config: LandConfig,
    settings: ResourceParam[Settings],
    clickhouse: ClickHouseResource,
    kafka: KafkaResource,
):
    source = config.to_source(settings)
    lander = build_lander(settings, source, config.shard, clickhouse.get_client())
    kind = source.kind
    controller = (
        BudgetController(
            clickhouse.get_client(),
            kafka.bootstrap,
            kafka.control_topic,
            settings.budgets.signal_reread_s,
        )
        if kind == "events"
        else None
    )
    updates = config.updates if config.updates is not None else default_updates(kind)
    asset_keys = [AssetKey.from_user_string(key) for key in updates]  # "a/b" is ["a", "b"]

    window = ReportWindow(settings.land.report_every_s)
    observed_at = -float("inf")  # the last campaign_budgets observation

    def record(report: BatchReport | None) -> None:
        if report is None:
            return
        metadata = _batch_metadata(report)
        for key in asset_keys:
            context.log_event(AssetMaterialization(asset_key=key, metadata=metadata))

    def on_batch(report: BatchReport) -> None:
        record(window.add(report))  # sub-second batches: one record per report_every_s
        nonlocal observed_at
        if controller is not None and report.cost_events:
            states, signals = controller.refresh()
            # The controller ran: the UI shows it on campaign_budgets (an observation), at
            # once when it sent signals, else once per report_every_s, as the batches are.
            if signals or time.monotonic() - observed_at >= settings.land.report_every_s:
                observed_at = time.monotonic()
                context.log_event(
                    AssetObservation(
                        asset_key="campaign_budgets", metadata=budget_metadata(states, signals)
                    )
                )
            for s in signals:
                context.log.info(f"campaign {s['campaign_id']}: {s['action']} ({s['reason']})")

    stop = StopRequest(context)
    with stop.deferring_signals():
        try:
            summary = lander.run(on_batch=on_batch, should_stop=stop, log=context.log.info)
        finally:  # batches landed before a failure are recorded too
            record(window.flush())
        context.log.info(
            f"landed {summary.rows} rows, {summary.dead_letters} dead letters in "
            f"{summary.batches} batches ({summary.replayed_batches} replayed); "
            f"stopped: {summary.stopped_because}"
        )


@cache
def landing_job(name: str = "land_events") -> JobDefinition:
    """The landing job (one object per name: every component that names it shares it)."""

    @job(
        name=name,
        executor_def=in_process_executor,
        description="A long-running landing run for one shard (started by the land sensors).",
    )
    def _job():
        land_shard()

    return _job


land_events = landing_job("land_events")
