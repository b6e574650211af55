"""Marts group: the analytic marts of sql/marts/ as daily-partitioned assets.

One multi-asset builds the selected marts of the selected days in one process (the day's
deduplicated events are prepared once for all marts). Each mart has the asset check
``reconciles_with_events``. Two schedules build yesterday after the day closes and today
often; a sensor rebuilds days whose landed files changed after they were built (late data).
Backfills: the UI's partition selection or ``eventplatform marts build --start --end``, or
``dagster asset materialize --select 'group:marts' --partition-range A...B`` (single run).
"""

import hashlib
import json
from datetime import UTC, date, datetime, timedelta

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    AssetSelection,
    AssetSpec,
    BackfillPolicy,
    DailyPartitionsDefinition,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    MaterializeResult,
    MetadataValue,
    RunRequest,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    TableColumn,
    TableSchema,
    define_asset_job,
    multi_asset,
    schedule,
    sensor,
)

from eventplatform.clickhouse import platform_clickhouse
from eventplatform.defs.resources import PlatformResource
from eventplatform.marts.backfill import BackfillRun, BuiltPartition, FailedCheck
from eventplatform.marts.build import MartBuilder, MartPartition, output_schema
from eventplatform.marts.catalog import Mart, load_marts
from eventplatform.marts.inputs import LakeScanner
from eventplatform.settings import Settings, get_settings

GROUP = "marts"
CHECK = "reconciles_with_events"
LAKE = "events_lake"
FINGERPRINTS = "input_fingerprints"

_settings = get_settings()
MARTS: list[Mart] = load_marts(_settings.paths.sql_dir / "marts")
marts_partitions = DailyPartitionsDefinition(
    start_date=_settings.marts.start_date, end_offset=1, timezone="UTC"
)


def _column_schema(mart: Mart, types: dict[str, str] | None = None) -> TableSchema:
    return TableSchema(
        columns=[
            TableColumn(name, (types or {}).get(name, "unknown"), description=description)
            for name, description in mart.columns.items()
        ]
    )


def _spec(mart: Mart) -> AssetSpec:
    schema = output_schema(_settings, mart)
    return AssetSpec(
        key=mart.name,
        group_name=GROUP,
        description=mart.description,
        owners=list(mart.owners),
        kinds={"duckdb", "parquet", "clickhouse"},
        # The usage mart also counts dead letters.
        deps=[LAKE, "dead_letters"] if mart.name == "customer_usage_daily" else [LAKE],
        partitions_def=marts_partitions,
        metadata={
            "dagster/column_schema": _column_schema(mart, {f.name: str(f.type) for f in schema}),
            "grain": ", ".join(mart.grain),
            "sql": MetadataValue.path(str(mart.path)),
        },
    )


MART_SPECS = [_spec(m) for m in MARTS]
MART_KEYS = [AssetKey(m.name) for m in MARTS]


def _builder(settings: Settings) -> MartBuilder:
    clickhouse = platform_clickhouse(settings) if settings.marts.mirror_clickhouse else None
    return MartBuilder(settings, clickhouse=clickhouse)


def _check_result(name: str, parts: list[MartPartition]) -> AssetCheckResult:
    failed = [(p.day, r) for p in parts for r in p.reconciliations if not r.passed]
    checked = sum(len(p.reconciliations) for p in parts)
    lines = [f"- {day}: {r}" for day, r in failed] or [
        f"- {p.day}: {len(p.reconciliations)} figures equal" for p in parts
    ]
    return AssetCheckResult(
        check_name=CHECK,
        asset_key=name,
        passed=not failed,
        severity=AssetCheckSeverity.ERROR,
        description=(
            f"{len(failed)} of {checked} figures differ from the day's events"
            if failed
            else f"all {checked} figures equal the day's events (and the ClickHouse mirror)"
        ),
        metadata={"mismatches": len(failed), "details": MetadataValue.md("\n".join(lines))},
    )


@multi_asset(
    name="marts",
    specs=MART_SPECS,
    check_specs=[
        AssetCheckSpec(
            CHECK,
            asset=m.name,
            description="The mart's totals equal the same figures computed from the day's "
            "deduplicated landed events (its reconcile lines), and its ClickHouse mirror "
            "has the same rows and sums as the DuckDB build.",
        )
        for m in MARTS
    ],
    partitions_def=marts_partitions,
    can_subset=True,
    backfill_policy=BackfillPolicy.single_run(),
)
def marts(context: AssetExecutionContext, platform: PlatformResource):
    settings = platform.settings()
    builder = _builder(settings)
    names = [k.path[-1] for k in context.selected_asset_keys]
    checks = {k.asset_key.path[-1] for k in context.selected_asset_check_keys}
    if context.has_partition_key or context.has_partition_key_range:
        days = [date.fromisoformat(k) for k in context.partition_keys]
    else:  # checks run alone (Dagster runs them without a partition): the recent built days
        today = datetime.now(UTC).date()
        recent = {
            str(today - timedelta(days=n)) for n in range(settings.marts.late_arrival_days + 1)
        }
        built_days = set().union(
            *(context.instance.get_materialized_partitions(AssetKey(n)) for n in checks)
        )
        days = sorted(date.fromisoformat(k) for k in recent & built_days)
    built: dict[str, list[MartPartition]] = {n: [] for n in names}
    types: dict[str, dict[str, str]] = {}
    for day in days:
        for part in builder.build_day(day, names):
            built[part.mart].append(part)
            context.log.info(
                f"{part.mart} {day}: {part.rows} rows in {part.seconds:.2f}s, "
                f"reconciled={part.reconciled}"
            )
    for name in names:
        schema = output_schema(settings, builder.by_name[name])
        types[name] = {f.name: str(f.type) for f in schema}
    for name in sorted(checks - set(names)):  # a check run alone: the stored day vs events
        parts = []
        for day in days:
            results = builder.reconcile_stored(day, [name])[name]
            parts.append(MartPartition(name, day, 0, "", builder.parquet_path(name, day), results))
        yield _check_result(name, parts)
    for name in names:
        parts = built[name]
        yield MaterializeResult(
            asset_key=name,
            metadata={
                # a range run records the same metadata on each of its partitions
                **({"dagster/row_count": parts[0].rows} if len(parts) == 1 else {}),
                "rows_per_day": MetadataValue.json({str(p.day): p.rows for p in parts}),
                FINGERPRINTS: MetadataValue.json({str(p.day): p.fingerprint for p in parts}),
                "dagster/column_schema": _column_schema(builder.by_name[name], types[name]),
                "warehouse": f"{settings.warehouse_path} (table {name})",
                "parquet": MetadataValue.path(str(parts[0].parquet_path.parent.parent)),
                "clickhouse": f"{settings.clickhouse.database}.{name}"
                if settings.marts.mirror_clickhouse
                else "not mirrored",
                "build_seconds": round(sum(p.seconds for p in parts), 3),
            },
            check_results=[_check_result(name, parts)] if name in checks else [],
        )


marts_job = define_asset_job(
    "marts_job",
    selection=AssetSelection.assets(*MART_KEYS),
    description="Builds the analytic marts for a day (or a range, in one run).",
    tags={"eventplatform/marts": "build"},  # dagster.yaml: one such run at a time
)


def _utc_day(context: ScheduleEvaluationContext) -> date:
    return context.scheduled_execution_time.astimezone(UTC).date()


@schedule(
    job=marts_job,
    cron_schedule=_settings.marts.daily_cron,
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Yesterday's marts, once the day (UTC) has closed.",
)
def marts_daily(context: ScheduleEvaluationContext):
    day = (_utc_day(context) - timedelta(days=1)).isoformat()
    return RunRequest(run_key=f"marts-daily-{day}", partition_key=day)


@schedule(
    job=marts_job,
    cron_schedule=_settings.marts.intraday_cron,
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Today's marts so far (the intra-day partition), rebuilt often.",
)
def marts_intraday(context: ScheduleEvaluationContext):
    return RunRequest(partition_key=_utc_day(context).isoformat())


def stale_partitions(instance, settings: Settings, today: date) -> dict[str, dict[str, str]]:
    """Built partitions (in the late-arrival window) whose input files changed since.

    Returns {partition key: {mart name: its inputs' current fingerprint}} for the marts to
    rebuild. A partition never built is not stale (building it is the schedules' or a
    backfill's job). Today is left to the intra-day schedule.
    """
    scanner = LakeScanner(settings.lake_dir)
    weeks = settings.marts.retention_weeks
    first = date.fromisoformat(settings.marts.start_date)
    stale: dict[str, dict[str, str]] = {}
    for back in range(settings.marts.late_arrival_days, 0, -1):
        day = today - timedelta(days=back)
        if day < first:
            continue
        key = day.isoformat()
        for mart in MARTS:
            records = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=AssetKey(mart.name), asset_partitions=[key]), limit=1
            ).records
            if not records or records[0].asset_materialization is None:
                continue
            recorded = records[0].asset_materialization.metadata.get(FINGERPRINTS)
            seen = (recorded.value or {}).get(key) if recorded is not None else None
            current = scanner.fingerprint(day, mart.reads_history, weeks)
            if seen != current:
                stale.setdefault(key, {})[mart.name] = current
    return stale


@sensor(
    name="marts_late_data",
    job=marts_job,
    minimum_interval_seconds=_settings.marts.sensor_interval_s,
    default_status=DefaultSensorStatus.RUNNING,
    description="Rebuilds a built day when events for it (or for the days its marts look back "
    "on) landed after it was built, within EP_MARTS_LATE_ARRIVAL_DAYS days before today.",
)
def marts_late_data(context: SensorEvaluationContext) -> SensorResult:
    stale = stale_partitions(context.instance, get_settings(), datetime.now(UTC).date())
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


MARTS_ASSETS = [marts]
MARTS_SCHEDULES = [marts_daily, marts_intraday]
MARTS_SENSORS = [marts_late_data]
MARTS_JOBS = [marts_job]


def materialize_range(start: date, end: date, names: list[str] | None = None, instance=None):
    """Build days start..end (one run, recorded in the Dagster instance like a UI backfill).

    What `eventplatform marts build` runs (through ``recorded_backfill``). Returns the
    ExecuteInProcessResult.
    """
    from dagster import DagsterInstance, materialize

    if instance is None:
        import os

        from eventplatform.runner import prepare_dagster_home

        os.environ["DAGSTER_HOME"] = str(prepare_dagster_home(get_settings()))
        instance = DagsterInstance.get()
    keys = [AssetKey(n) for n in (names or [m.name for m in MARTS])]
    return materialize(
        [marts],
        instance=instance,
        resources={"platform": PlatformResource()},
        selection=keys,
        tags={
            "dagster/asset_partition_range_start": start.isoformat(),
            "dagster/asset_partition_range_end": end.isoformat(),
            "eventplatform/reason": "cli-backfill",
        },
    )


def recorded_backfill(start: date, end: date, names: list[str] | None = None) -> BackfillRun:
    """``materialize_range``, told in the marts' terms: what `eventplatform marts build` is
    handed (by ``eventplatform/cli.py``), so that marts/ never imports Dagster."""
    result = materialize_range(start, end, names)
    return BackfillRun(
        run_id=result.run_id,
        success=result.success,
        built=[
            BuiltPartition(
                m.partition,
                m.asset_key.to_user_string(),
                m.metadata["rows_per_day"].value.get(m.partition),
            )
            for m in result.asset_materializations_for_node("marts")
        ],
        failed_checks=[
            FailedCheck(CHECK, e.asset_key.to_user_string(), e.description or "")
            for e in result.get_asset_check_evaluations()
            if not e.passed
        ],
    )
