"""`KafkaLanding`: a Dagster Component that lands one Kafka topic, declared in YAML.

One declaration (a ``defs.yaml`` under ``eventplatform/defs/``) gives a topic, its shards,
the rows it lands (``events`` or ``dead_letters``: the lake folder and ClickHouse table), a
batch policy and the assets each batch updates. ``build_defs`` makes the sensor
``land_<name>``, the landing job it targets (``land_events`` unless named) and the external
assets the declaration owns. The landing itself is ``eventplatform.land`` (no Dagster there).

Topic and shards may be literal or ``setting:<section>.<field>`` (read from the typed settings
when the sensor runs), so the platform's own sources follow EP_* variables. See
docs/landing-component.md.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import dagster as dg
import yaml

from eventplatform.defs.ingest.landing import LandConfig, default_updates, landing_job
from eventplatform.land.sources import BatchPolicy, Source, lag_per_shard, setting_value
from eventplatform.settings import Settings, get_settings

SHARD_TAG = "eventplatform/shard"
SOURCE_TAG = "eventplatform/source"
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
DEFAULT_JOB = "land_events"
LANDED_FOLDER = Path(__file__).parent / "landed"


class Batch(dg.Model):
    """When a micro-batch closes (whichever comes first); unset keeps EP_LAND_BATCH_MAX_*."""

    max_records: int | None = None
    max_bytes: int | None = None
    max_wait_s: float | None = None


@dataclass
class KafkaLanding(dg.Component, dg.Resolvable):
    """Lands a Kafka topic into the lake and ClickHouse: a sensor that starts a landing run
    per shard with lag and none in flight, the job, and the assets it updates."""

    name: str
    topic: str
    shards: int | str = 1
    sink: Literal["events", "dead_letters"] = "events"
    batch: Batch | None = None
    assets: Sequence[dg.ResolvedAssetSpec] = field(default_factory=list)
    updates: Sequence[str] | None = None
    priority: int = 0
    job: str = DEFAULT_JOB
    sensor_interval_s: int | None = None
    description: str | None = None

    @property
    def asset_keys(self) -> list[str]:
        """What each batch materializes: ``updates``, else the owned assets, else the
        platform's landed assets for the sink."""
        if self.updates is not None:
            return list(self.updates)
        if self.assets:
            return [spec.key.to_user_string() for spec in self.assets]
        return default_updates(self.sink)

    def source(self, settings: Settings) -> Source:
        """The domain's description of this topic, with settings references resolved."""
        batch = self.batch or Batch()
        return Source(
            name=self.name,
            topic=str(setting_value(settings, self.topic)),
            shards=int(setting_value(settings, self.shards)),
            kind=self.sink,
            priority=self.priority,
            batch=BatchPolicy(batch.max_records, batch.max_bytes, batch.max_wait_s),
        )

    def sensor(self, interval_s: int) -> dg.SensorDefinition:
        """The sensor ``land_<name>``: a run per shard with lag and no run in flight."""
        job_name = self.job

        @dg.sensor(
            name=f"land_{self.name}",
            job_name=job_name,
            minimum_interval_seconds=interval_s,
            default_status=dg.DefaultSensorStatus.RUNNING,
            description=self.description
            or f"Starts a landing run for each shard of {self.topic} with lag and no run in "
            "flight.",
        )
        def _sensor(context: dg.SensorEvaluationContext, settings: dg.ResourceParam[Settings]):
            source = self.source(settings)
            by_shard = lag_per_shard(settings, source)
            in_flight = _shards_in_flight(context, job_name, source.topic)
            wanted = [s for s, n in by_shard.items() if n > 0 and s not in in_flight]
            context.update_cursor(json.dumps({"lag": by_shard, "in_flight": sorted(in_flight)}))
            context.log.info(
                f"{source.topic}: lag per shard {by_shard}; in flight {sorted(in_flight)}; "
                f"requesting {wanted}"
            )
            if not wanted:
                return dg.SkipReason(
                    f"{source.topic}: no shard with lag and no run (lag {by_shard})"
                )
            return [self.run_request(source, shard) for shard in wanted]

        return _sensor

    def run_request(self, source: Source, shard: int) -> dg.RunRequest:
        config = LandConfig(
            source=source.name,
            shard=shard,
            topic=source.topic,
            shards=source.shards,
            kind=source.kind,
            batch_max_records=source.batch.max_records,
            batch_max_bytes=source.batch.max_bytes,
            batch_max_wait_s=source.batch.max_wait_s,
            updates=self.asset_keys,
        )
        return dg.RunRequest(
            run_config=dg.RunConfig(ops={"land_shard": config}),
            tags={
                SHARD_TAG: f"{source.topic}/{shard}",
                SOURCE_TAG: source.name,
                "dagster/priority": str(source.priority),
            },
        )

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        interval = self.sensor_interval_s or get_settings().land.sensor_interval_s
        # The sensor names its job. `land_events` is registered once, by landing.py, for
        # every declaration that shares it (Dagster copies each YAML component's objects to
        # tag them, so two declarations handing in the same job would register it twice);
        # a job of another name belongs to the one declaration that names it.
        jobs = [] if self.job == DEFAULT_JOB else [landing_job(self.job)]
        return dg.Definitions(assets=list(self.assets), sensors=[self.sensor(interval)], jobs=jobs)


def _shards_in_flight(context: dg.SensorEvaluationContext, job_name: str, topic: str) -> set[int]:
    runs = context.instance.get_runs(
        filters=dg.RunsFilter(job_name=job_name, statuses=IN_FLIGHT), limit=500
    )
    prefix = f"{topic}/"
    return {
        int(run.tags[SHARD_TAG].removeprefix(prefix))
        for run in runs
        if run.tags.get(SHARD_TAG, "").startswith(prefix)
    }


def platform_landing(name: str) -> KafkaLanding:
    """One of the platform's own declarations (``landed/<name>/defs.yaml``)."""
    declaration = yaml.safe_load((LANDED_FOLDER / name / "defs.yaml").read_text())
    component = KafkaLanding.from_attributes_dict(attributes=declaration["attributes"])
    assert isinstance(component, KafkaLanding)
    return component
