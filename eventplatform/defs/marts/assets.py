"""The analytic marts of sql/marts/ as daily-partitioned assets, built by one multi-asset.

One multi-asset builds the selected marts of the selected days in one process (the day's
deduplicated events are prepared once for all marts). Each mart has the asset check
``reconciles_with_events``. Which marts exist, and the first day, are settings: the
multi-asset is made by ``marts_asset(settings)`` when the code location loads.
"""

from datetime import UTC, date, datetime, timedelta

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    AssetSpec,
    AutomationCondition,
    BackfillPolicy,
    DailyPartitionsDefinition,
    Definitions,
    MaterializeResult,
    MetadataValue,
    ResourceParam,
    TableColumn,
    TableSchema,
    TimeWindowPartitionMapping,
    definitions,
    multi_asset,
)

from eventplatform.defs.resources import ClickHouseResource
from eventplatform.marts.activity import (
    DAILY_USERS,
    STATE_ASSETS,
    STATE_COLUMNS,
    STATE_TYPES,
    USER_ACTIVITY,
    WINDOW_DAYS,
)
from eventplatform.marts.build import MartBuilder, MartPartition, output_schema
from eventplatform.marts.catalog import Mart, load_marts
from eventplatform.settings import Settings, get_settings

GROUP = "marts"
CHECK = "reconciles_with_events"
LAKE = "events_lake"
FINGERPRINTS = "input_fingerprints"


def catalog(settings: Settings) -> list[Mart]:
    """The marts defined in sql/marts/ (EP_SQL_DIR)."""
    return load_marts(settings.paths.sql_dir / "marts")


def marts_partitions(settings: Settings) -> DailyPartitionsDefinition:
    return DailyPartitionsDefinition(
        start_date=settings.marts.start_date, end_offset=1, timezone="UTC"
    )


def intraday_condition(settings: Settings) -> AutomationCondition:
    """Today's partition, once per EP_MARTS_INTRADAY_CRON tick, after events landed since the
    tick (on_cron waits for the lake only: the usage mart also reads dead letters, which may
    never change in a tick). An idle platform rebuilds nothing."""
    return AutomationCondition.on_cron(settings.marts.intraday_cron).allow(
        AssetSelection.assets(LAKE)
    )


def _column_schema(columns: dict[str, str], types: dict[str, str] | None = None) -> TableSchema:
    return TableSchema(
        columns=[
            TableColumn(name, (types or {}).get(name, "unknown"), description=description)
            for name, description in columns.items()
        ]
    )


def _state_specs(settings: Settings) -> list[AssetSpec]:
    """The per-day user sets and the activity state the history marts read (not mirrored)."""
    descriptions = {
        DAILY_USERS: "The distinct (customer_id, user_id) of the day's deduplicated events: "
        "what the activity state is rebuilt from when a day changes.",
        USER_ACTIVITY: "Per customer and user active in the 63 days ending on the day, a bitmap "
        "of the days they were active: yesterday's state shifted plus the day's users, so "
        "active users and retention cost the same whatever the length of the history.",
    }
    window = TimeWindowPartitionMapping(start_offset=-(WINDOW_DAYS - 1))
    return [
        AssetSpec(
            key=name,
            group_name=GROUP,
            description=descriptions[name],
            owners=["team:data-platform"],
            kinds={"parquet"},
            deps=[LAKE]
            if name == DAILY_USERS
            else [LAKE, AssetDep(DAILY_USERS, partition_mapping=window)],
            partitions_def=marts_partitions(settings),
            automation_condition=intraday_condition(settings),  # built with today's marts
            metadata={"dagster/column_schema": _column_schema(STATE_COLUMNS[name], STATE_TYPES)},
        )
        for name in STATE_ASSETS
    ]


def _spec(settings: Settings, mart: Mart) -> AssetSpec:
    schema = output_schema(settings, mart)
    return AssetSpec(
        key=mart.name,
        group_name=GROUP,
        description=mart.description,
        owners=list(mart.owners),
        kinds={"duckdb", "parquet", "clickhouse"},
        # The usage mart also counts dead letters.
        deps=(
            [LAKE, "dead_letters"]
            if mart.name == "customer_usage_daily"
            else [LAKE, USER_ACTIVITY]
            if mart.reads_history
            else [LAKE]
        ),
        partitions_def=marts_partitions(settings),
        automation_condition=intraday_condition(settings),
        metadata={
            "dagster/column_schema": _column_schema(
                mart.columns, {f.name: str(f.type) for f in schema}
            ),
            "grain": ", ".join(mart.grain),
            "sql": MetadataValue.path(str(mart.path)),
        },
    )


def _builder(settings: Settings, clickhouse: ClickHouseResource) -> MartBuilder:
    mirror = clickhouse.get_client() if settings.marts.mirror_clickhouse else None
    return MartBuilder(settings, clickhouse=mirror)


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


def marts_asset(settings: Settings) -> AssetsDefinition:
    """The multi-asset `marts`: one asset per mart in the catalog, partitioned by day."""
    marts_list = catalog(settings)

    @multi_asset(
        name="marts",
        specs=[_spec(settings, m) for m in marts_list] + _state_specs(settings),
        check_specs=[
            AssetCheckSpec(
                CHECK,
                asset=m.name,
                description="The mart's totals equal the same figures computed from the day's "
                "deduplicated landed events (its reconcile lines), and its ClickHouse mirror "
                "has the same rows and sums as the DuckDB build.",
            )
            for m in marts_list
        ],
        partitions_def=marts_partitions(settings),
        can_subset=True,
        backfill_policy=BackfillPolicy.single_run(),
    )
    def marts(
        context: AssetExecutionContext,
        settings: ResourceParam[Settings],
        clickhouse: ClickHouseResource,
    ):
        builder = _builder(settings, clickhouse)
        selected = {k.path[-1] for k in context.selected_asset_keys}
        # yielded in topological order: the user sets, the activity state, then the marts
        names = [n for n in STATE_ASSETS if n in selected] + sorted(selected - set(STATE_ASSETS))
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
        columns: dict[str, dict[str, str]] = dict(STATE_COLUMNS)
        for name in names:
            if name in STATE_ASSETS:
                types[name] = STATE_TYPES
                continue
            schema = output_schema(settings, builder.by_name[name])
            types[name] = {f.name: str(f.type) for f in schema}
            columns[name] = builder.by_name[name].columns
        for name in sorted(checks - set(names)):  # a check run alone: the stored day vs events
            parts = []
            for day in days:
                results = builder.reconcile_stored(day, [name])[name]
                parts.append(
                    MartPartition(name, day, 0, "", builder.parquet_path(name, day), results)
                )
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
                    "dagster/column_schema": _column_schema(columns[name], types[name]),
                    "warehouse": "not stored there (the lake's state files)"
                    if name in STATE_ASSETS
                    else f"{settings.warehouse_path} (table {name})",
                    "parquet": MetadataValue.path(str(parts[0].parquet_path.parent.parent)),
                    "clickhouse": f"{settings.clickhouse.database}.{name}"
                    if settings.marts.mirror_clickhouse and name not in STATE_ASSETS
                    else "not mirrored",
                    "build_seconds": round(sum(p.seconds for p in parts), 3),
                },
                check_results=[_check_result(name, parts)] if name in checks else [],
            )

    return marts


@definitions
def defs() -> Definitions:
    return Definitions(assets=[marts_asset(get_settings())])
