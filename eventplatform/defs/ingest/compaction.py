"""Lake compaction in Dagster: the `compact_lake` job and the `lake_compaction` sensor that
starts it every EP_LAND_COMPACT_INTERVAL_S (one run at a time). The work is
``eventplatform/land/compact.py``; each run records what it merged as an observation of
`events_lake` (the rows do not change, their files do)."""

import dagster as dg

from eventplatform.land.compact import compact_platform_lake
from eventplatform.settings import Settings, get_settings

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dg.op(description="One compaction pass over the lake (closed hours' small files into few).")
def compact_lake_op(context: dg.OpExecutionContext, settings: dg.ResourceParam[Settings]) -> None:
    report = compact_platform_lake(settings, log=context.log.info)
    context.log_event(
        dg.AssetObservation(
            asset_key="events_lake",
            metadata={
                "compacted_files": report.inputs,
                "written_files": report.outputs,
                "folders": report.folders,
                "input_bytes": report.input_bytes,
                "output_bytes": report.output_bytes,
                "deleted_superseded": report.deleted,
                "deferred_folders": report.deferred_folders,
            },
        )
    )


@dg.job(
    name="compact_lake",
    executor_def=dg.in_process_executor,
    description="Rewrites the lake's small landing files into few, every row once "
    "(docs/landing.md, Compaction).",
)
def compact_lake_job():
    compact_lake_op()


def lake_compaction_sensor(interval_s: int) -> dg.SensorDefinition:
    """The sensor, polling every ``interval_s`` (EP_LAND_COMPACT_INTERVAL_S)."""

    @dg.sensor(
        name="lake_compaction",
        job_name="compact_lake",  # by name, as the land sensors do (a bound job warns)
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Starts a compaction run of the lake unless one is queued or running.",
    )
    def lake_compaction(context: dg.SensorEvaluationContext):
        running = context.instance.get_run_records(
            filters=dg.RunsFilter(job_name="compact_lake", statuses=IN_FLIGHT), limit=1
        )
        if running:
            return dg.SkipReason(f"compaction run {running[0].dagster_run.run_id} is in flight")
        return dg.RunRequest()

    return lake_compaction


@dg.definitions
def defs() -> dg.Definitions:
    """Built when Dagster loads the location, not at import: the settings are read then."""
    return dg.Definitions(
        jobs=[compact_lake_job],
        sensors=[lake_compaction_sensor(get_settings().land.compact_interval_s)],
    )
