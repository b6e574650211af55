"""Ingest group: the landing runs, the sensors that start them, and the assets they update.

A sensor per landed topic reads the landing group's lag per shard and requests a run of
`land_events` for each shard that has lag and no run queued or in flight (the tag
``eventplatform/shard`` also has a concurrency limit of one in dagster.yaml). The run is
`eventplatform.land` doing its work; each micro-batch is reported as materializations of
`events_lake` and `events_clickhouse` (or `dead_letters`), and, when the batch carried
cost-bearing events, the budget controller runs right away so a pause reaches ad servers
within seconds.
"""

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from dagster import (
    AssetMaterialization,
    AssetSpec,
    Config,
    DagsterRunStatus,
    DefaultSensorStatus,
    OpExecutionContext,
    RunConfig,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SkipReason,
    in_process_executor,
    job,
    op,
    sensor,
)

from eventplatform.budgets.signals import BudgetController
from eventplatform.clickhouse import platform_clickhouse
from eventplatform.defs.resources import PlatformResource
from eventplatform.land.lander import BatchReport
from eventplatform.land.sources import build_lander, lag_per_shard, sources
from eventplatform.settings import get_settings

SHARD_TAG = "eventplatform/shard"
IN_FLIGHT = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]

events_lake = AssetSpec(
    "events_lake",
    group_name="ingest",
    kinds={"kafka", "parquet"},
    owners=["team:data-platform"],
    deps=["kafka_topics"],
    description="Landed events as Parquet (zstd), hive-partitioned by event_date and "
    "event_hour; file names carry topic, partition and offset range. Updated by every "
    "landing micro-batch.",
)
events_clickhouse = AssetSpec(
    "events_clickhouse",
    group_name="ingest",
    kinds={"kafka", "clickhouse"},
    owners=["team:data-platform"],
    deps=["kafka_topics"],
    description="Landed events in ClickHouse (table `events`), the same rows as the lake, "
    "inserted once per micro-batch with a deduplication token.",
)
dead_letters = AssetSpec(
    "dead_letters",
    group_name="ingest",
    kinds={"kafka", "parquet", "clickhouse"},
    owners=["team:data-platform"],
    deps=["kafka_topics"],
    description="Everything that could not be used (events.dlq), with its reason and bytes: "
    "lake folder dead_letters/ and ClickHouse table `dead_letters`.",
)
LANDING_ASSETS = [events_lake, events_clickhouse, dead_letters]


class LandConfig(Config):
    source: str = "raw"  # raw | overflow | dlq
    shard: int = 0


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
    }
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
def land_shard(context: OpExecutionContext, config: LandConfig, platform: PlatformResource):
    settings = platform.settings()
    lander = build_lander(settings, config.source, config.shard)
    kind = sources(settings)[config.source].kind
    controller = (
        BudgetController(
            platform_clickhouse(settings),
            settings.kafka.bootstrap,
            settings.kafka.control_topic,
            settings.budgets.signal_reread_s,
        )
        if kind == "events"
        else None
    )
    asset_keys = ["events_lake", "events_clickhouse"] if kind == "events" else ["dead_letters"]

    def on_batch(report: BatchReport) -> None:
        metadata = _batch_metadata(report)
        for key in asset_keys:
            context.log_event(AssetMaterialization(asset_key=key, metadata=metadata))
        if controller is not None and report.cost_events:
            _, signals = controller.refresh()
            for s in signals:
                context.log.info(f"campaign {s['campaign_id']}: {s['action']} ({s['reason']})")

    stop = StopRequest(context)
    with stop.deferring_signals():
        summary = lander.run(on_batch=on_batch, should_stop=stop, log=context.log.info)
        context.log.info(
            f"landed {summary.rows} rows, {summary.dead_letters} dead letters in "
            f"{summary.batches} batches ({summary.replayed_batches} replayed); "
            f"stopped: {summary.stopped_because}"
        )


@job(
    executor_def=in_process_executor,
    description="A long-running landing run for one shard (started by the land sensors).",
)
def land_events():
    land_shard()


def _shards_in_flight(context: SensorEvaluationContext, topic: str) -> set[int]:
    runs = context.instance.get_runs(
        filters=RunsFilter(job_name="land_events", statuses=IN_FLIGHT), limit=500
    )
    prefix = f"{topic}/"
    return {
        int(run.tags[SHARD_TAG].removeprefix(prefix))
        for run in runs
        if run.tags.get(SHARD_TAG, "").startswith(prefix)
    }


def _land_sensor(source_name: str, description: str):
    @sensor(
        name=f"land_{source_name}",
        job=land_events,
        minimum_interval_seconds=get_settings().land.sensor_interval_s,
        default_status=DefaultSensorStatus.RUNNING,
        description=description,
    )
    def _sensor(context: SensorEvaluationContext, platform: PlatformResource):
        settings = platform.settings()
        source = sources(settings)[source_name]
        by_shard = lag_per_shard(settings, source)
        in_flight = _shards_in_flight(context, source.topic)
        wanted = [s for s, n in by_shard.items() if n > 0 and s not in in_flight]
        context.update_cursor(json.dumps({"lag": by_shard, "in_flight": sorted(in_flight)}))
        context.log.info(
            f"{source.topic}: lag per shard {by_shard}; in flight {sorted(in_flight)}; "
            f"requesting {wanted}"
        )
        if not wanted:
            return SkipReason(f"{source.topic}: no shard with lag and no run (lag {by_shard})")
        return [
            RunRequest(
                run_config=RunConfig(
                    ops={"land_shard": LandConfig(source=source_name, shard=shard)}
                ),
                tags={
                    SHARD_TAG: f"{source.topic}/{shard}",
                    "eventplatform/source": source_name,
                    "dagster/priority": str(source.priority),
                },
            )
            for shard in wanted
        ]

    return _sensor


land_raw = _land_sensor(
    "raw", "Starts a landing run for each shard of events.raw with lag and no run in flight."
)
land_overflow = _land_sensor(
    "overflow", "The same for events.overflow (customers over quota), at lower run priority."
)
land_dlq = _land_sensor(
    "dlq", "The same for events.dlq: dead letters into the lake and ClickHouse."
)
LAND_SENSORS = [land_raw, land_overflow, land_dlq]
