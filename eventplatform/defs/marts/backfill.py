"""`eventplatform marts build`: a range of days in one run, recorded in the Dagster instance
like a UI backfill (``eventplatform/cli.py`` hands ``recorded_backfill`` to the marts
package, so that marts/ never imports Dagster)."""

from datetime import date

from dagster import AssetKey, DagsterInstance, ExecuteInProcessResult, materialize

from eventplatform.defs.marts.assets import CHECK, catalog, marts_asset
from eventplatform.defs.resources import platform_resources
from eventplatform.marts.activity import STATE_ASSETS
from eventplatform.marts.backfill import BackfillRun, BuiltPartition, FailedCheck
from eventplatform.settings import Settings, get_settings


def materialize_range(
    start: date,
    end: date,
    names: list[str] | None = None,
    instance: DagsterInstance | None = None,
    settings: Settings | None = None,
) -> ExecuteInProcessResult:
    """Build days start..end (one run, recorded in the Dagster instance like a UI backfill).

    What `eventplatform marts build` runs (through ``recorded_backfill``). Returns the
    ExecuteInProcessResult.
    """
    settings = settings or get_settings()
    if instance is None:
        import os

        from eventplatform.runner import prepare_dagster_home

        os.environ["DAGSTER_HOME"] = str(prepare_dagster_home(settings))
        instance = DagsterInstance.get()
    everything = [*STATE_ASSETS, *(m.name for m in catalog(settings))]
    keys = [AssetKey(n) for n in (names or everything)]
    return materialize(
        [marts_asset(settings)],
        instance=instance,
        resources=platform_resources(settings),
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
