"""The land sensors: one per landed topic, each starting runs of `land_events`.

A sensor reads the landing group's lag per shard and requests a run for each shard that has
lag and no run queued or in flight (the tag ``eventplatform/shard`` also has a concurrency
limit of one in dagster.yaml). Their interval is a setting, so they are built at load time.
"""

import json

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    Definitions,
    ResourceParam,
    RunConfig,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    definitions,
    sensor,
)

from eventplatform.defs.ingest.landing import LandConfig, land_events
from eventplatform.land.sources import lag_per_shard, sources
from eventplatform.settings import Settings, get_settings

SHARD_TAG = "eventplatform/shard"
IN_FLIGHT = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]
DESCRIPTIONS = {
    "raw": "Starts a landing run for each shard of events.raw with lag and no run in flight.",
    "overflow": "The same for events.overflow (customers over quota), at lower run priority.",
    "dlq": "The same for events.dlq: dead letters into the lake and ClickHouse.",
}


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


def land_sensor(source_name: str, interval_s: int) -> SensorDefinition:
    """The sensor ``land_<source_name>`` (raw, overflow or dlq)."""

    @sensor(
        name=f"land_{source_name}",
        job=land_events,
        minimum_interval_seconds=interval_s,
        default_status=DefaultSensorStatus.RUNNING,
        description=DESCRIPTIONS[source_name],
    )
    def _sensor(context: SensorEvaluationContext, settings: ResourceParam[Settings]):
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


def land_sensors(settings: Settings) -> list[SensorDefinition]:
    """A sensor per landed source, at the configured interval."""
    return [land_sensor(name, settings.land.sensor_interval_s) for name in sources(settings)]


@definitions
def defs() -> Definitions:
    return Definitions(sensors=land_sensors(get_settings()))
