"""When the marts are built.

- Today so far: declarative automation. Each mart's ``automation_condition`` (``on_cron`` on
  EP_MARTS_INTRADAY_CRON, waiting for the lake to change since the tick) is evaluated by the
  ``marts_automation`` sensor, which starts one run for all marts of the partition.
- Yesterday, once the day closed: the schedule ``marts_daily``. It must run whether or not
  anything landed after midnight, at a fixed time, with one run key per day: a schedule.
- Late data: the sensor ``marts_late_data`` rebuilds built days whose landed files changed
  (by fingerprint, in the late-arrival window). Dagster sees one unpartitioned lake asset,
  so no automation condition can tell which past day a late file belongs to.

Backfills: the UI's partition selection or ``eventplatform marts build --start --end``, or
``dagster asset materialize --select 'group:marts' --partition-range A...B`` (single run).
The crons and the sensor's interval are settings, so these are built at load time.
"""

import hashlib
import json
from datetime import UTC, date, datetime, timedelta

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    ResourceParam,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    definitions,
    schedule,
    sensor,
)

from eventplatform.defs.marts.assets import FINGERPRINTS, GROUP, catalog
from eventplatform.defs.resources import LakeResource
from eventplatform.marts.activity import DAILY_USERS, USER_ACTIVITY
from eventplatform.settings import Settings, get_settings

MARTS_RUN_TAGS = {"eventplatform/marts": "build"}  # dagster.yaml: one such run at a time

marts_job = define_asset_job(
    "marts_job",
    selection=AssetSelection.groups(GROUP),
    description="Builds the analytic marts for a day (or a range, in one run).",
    tags=MARTS_RUN_TAGS,
)


def _utc_day(context: ScheduleEvaluationContext) -> date:
    return context.scheduled_execution_time.astimezone(UTC).date()


def marts_automation_sensor() -> AutomationConditionSensorDefinition:
    """Evaluates the marts' automation conditions (today's partition, see the module)."""
    return AutomationConditionSensorDefinition(
        "marts_automation",
        target=AssetSelection.groups(GROUP),
        run_tags=MARTS_RUN_TAGS,
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        emit_backfills=False,  # runs, one per partition: the multi-asset builds them together
        description="Today's marts after each EP_MARTS_INTRADAY_CRON tick, once events landed.",
    )


def marts_schedules(settings: Settings) -> list[ScheduleDefinition]:
    """`marts_daily`, on the configured cron."""

    @schedule(
        job=marts_job,
        cron_schedule=settings.marts.daily_cron,
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
        description="Yesterday's marts, once the day (UTC) has closed.",
    )
    def marts_daily(context: ScheduleEvaluationContext):
        day = (_utc_day(context) - timedelta(days=1)).isoformat()
        return RunRequest(run_key=f"marts-daily-{day}", partition_key=day)

    return [marts_daily]


def stale_partitions(
    instance, settings: Settings, lake: LakeResource, today: date
) -> dict[str, dict[str, str]]:
    """Built partitions (in the late-arrival window) whose input files changed since.

    Returns {partition key: {mart name: its inputs' current fingerprint}} for the marts to
    rebuild. A partition never built is not stale (building it is the schedules' or a
    backfill's job). Today is left to the intra-day schedule.
    """
    scanner = lake.scanner()
    weeks = settings.marts.retention_weeks
    first = date.fromisoformat(settings.marts.start_date)
    stale: dict[str, dict[str, str]] = {}
    for back in range(settings.marts.late_arrival_days, 0, -1):
        day = today - timedelta(days=back)
        if day < first:
            continue
        key = day.isoformat()
        readers = [(m.name, m.reads_history) for m in catalog(settings)]
        readers += [(DAILY_USERS, False), (USER_ACTIVITY, True)]
        for name, reads_history in readers:
            records = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=AssetKey(name), asset_partitions=[key]), limit=1
            ).records
            if not records or records[0].asset_materialization is None:
                continue
            recorded = records[0].asset_materialization.metadata.get(FINGERPRINTS)
            seen = (recorded.value or {}).get(key) if recorded is not None else None
            current = scanner.fingerprint(day, reads_history, weeks)
            if seen != current:
                stale.setdefault(key, {})[name] = current
    return stale


def marts_late_data_sensor(interval_s: int) -> SensorDefinition:
    """`marts_late_data`, evaluated every ``interval_s`` seconds."""

    @sensor(
        name="marts_late_data",
        job=marts_job,
        minimum_interval_seconds=interval_s,
        default_status=DefaultSensorStatus.RUNNING,
        description="Rebuilds a built day when events for it (or for the days its marts look back "
        "on) landed after it was built, within EP_MARTS_LATE_ARRIVAL_DAYS days before today.",
    )
    def marts_late_data(
        context: SensorEvaluationContext, settings: ResourceParam[Settings], lake: LakeResource
    ) -> SensorResult:
        stale = stale_partitions(context.instance, settings, lake, datetime.now(UTC).date())
        if not stale:
            return SensorResult(skip_reason=SkipReason("no built partition has new landed files"))
        requests = []
        for key, marts_to_build in sorted(stale.items()):
            token = hashlib.sha256(json.dumps(marts_to_build, sort_keys=True).encode()).hexdigest()
            context.log.info(f"late data for {key}: rebuilding {', '.join(sorted(marts_to_build))}")
            requests.append(
                RunRequest(
                    run_key=f"marts-late-{key}-{token[:16]}",
                    partition_key=key,
                    asset_selection=[AssetKey(n) for n in sorted(marts_to_build)],
                    tags={"eventplatform/reason": "late-data"},
                )
            )
        return SensorResult(run_requests=requests)

    return marts_late_data


@definitions
def defs() -> Definitions:
    settings = get_settings()
    return Definitions(
        jobs=[marts_job],
        schedules=marts_schedules(settings),
        sensors=[
            marts_late_data_sensor(settings.marts.sensor_interval_s),
            marts_automation_sensor(),
        ],
    )
