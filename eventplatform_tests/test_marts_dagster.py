"""The marts in Dagster on a real instance: partitions, the reconciliation check, the
late-data sensor, the schedules, backfills from the CLI, and `eventplatform sql`."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetSpec,
    DagsterInstance,
    DefaultSensorStatus,
    Definitions,
    ExecuteInProcessResult,
    RunRequest,
    build_schedule_context,
    build_sensor_context,
    evaluate_automation_conditions,
    materialize,
)

from eventplatform.cli import main as cli_main
from eventplatform.defs.marts.assets import FINGERPRINTS, LAKE, marts_asset
from eventplatform.defs.marts.automation import (
    marts_automation_sensor,
    marts_late_data_sensor,
    marts_schedules,
)
from eventplatform.defs.marts.backfill import materialize_range
from eventplatform.defs.resources import platform_resources
from eventplatform.marts.catalog import load_marts
from eventplatform.settings import REPO_ROOT, Settings
from eventplatform_tests.marts_data import D1, D2, ad, land, make_lake

ALL = sorted(m.name for m in load_marts(REPO_ROOT / "sql" / "marts"))
HISTORY = ["product_active_users_daily", "product_retention_weekly"]
STATE = ["daily_users", "user_activity"]  # the per-day user sets and the activity state


@pytest.fixture(scope="module")
def instance_template(memory_dir: Path) -> Path:
    """An instance folder whose SQLite storage Dagster created, once for the module (0.5-1 s
    each time); ``instance`` opens a copy of it (tens of ms). In memory (conftest.py)."""
    path = Path(tempfile.mkdtemp(prefix="instance-template-", dir=memory_dir)) / "instance"
    path.mkdir()
    with DagsterInstance.local_temp(str(path)):
        pass
    return path


@pytest.fixture
def instance(memory_path: Path, instance_template: Path) -> Iterator[DagsterInstance]:
    """A real (SQLite) instance of this test's own, with no runs in it."""
    shutil.copytree(instance_template, memory_path / "instance")
    with DagsterInstance.local_temp(str(memory_path / "instance")) as inst:
        yield inst


def build(settings: Settings, instance: DagsterInstance, day: date, names: list[str] | None = None):
    """Materialize a day of the marts, the multi-asset and its resources made from ``settings``."""
    return materialize(
        [marts_asset(settings)],
        instance=instance,
        partition_key=day.isoformat(),
        resources=platform_resources(settings),
        selection=[AssetKey(n) for n in names] if names else None,
    )


@pytest.fixture(scope="module")
def d1_built_once(
    tmp_path_factory: pytest.TempPathFactory, memory_dir: Path, instance_template: Path
) -> tuple[Path, Path, ExecuteInProcessResult]:
    """The known lake with D1 materialized on a real instance, once for the module: its data
    folder, its instance folder and the run's result. ``d1_built`` gives each test copies."""
    data = tmp_path_factory.mktemp("d1-built") / "data"
    home = Path(tempfile.mkdtemp(prefix="d1-built-", dir=memory_dir))
    shutil.copytree(instance_template, home / "instance")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("EP_DATA_DIR", str(data))
        env.setenv("DAGSTER_HOME", str(home / "dagster"))
        settings = Settings()
        make_lake(settings.lake_dir)
        with DagsterInstance.local_temp(str(home / "instance")) as inst:
            result = build(settings, inst, D1)
    return data, home / "instance", result


@pytest.fixture
def d1_built(
    mart_env: Settings, memory_path: Path, d1_built_once
) -> Iterator[tuple[DagsterInstance, ExecuteInProcessResult]]:
    """This test's copy of ``d1_built_once`` (its data folder is ``mart_env``'s): its instance
    and the run that built D1."""
    data, instance_dir, result = d1_built_once
    # symlinks kept: the embedded engine's folder links its tables relatively (data/ -> store/)
    shutil.copytree(data, mart_env.data_dir, symlinks=True, dirs_exist_ok=True)
    shutil.copytree(instance_dir, memory_path / "instance")
    with DagsterInstance.local_temp(str(memory_path / "instance")) as inst:
        yield inst, result


def impressions(settings: Settings, day: date) -> int:
    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    try:
        return con.execute(
            "SELECT coalesce(sum(impressions), 0) FROM campaign_performance_daily "
            "WHERE event_date = $d",
            {"d": day},
        ).fetchall()[0][0]
    finally:
        con.close()


def test_the_marts_are_assets_with_lineage_owners_and_column_descriptions() -> None:
    from eventplatform.definitions import defs

    loaded = defs()
    graph = loaded.get_repository_def().asset_graph
    # every asset with an automation condition is evaluated by a sensor of ours, running by
    # default (so Dagster adds no default_automation_condition_sensor, which starts stopped)
    sensors = {s.name: s for s in loaded.get_repository_def().sensor_defs}
    assert "default_automation_condition_sensor" not in sensors
    for name in ("marts_automation", "budgets_automation"):
        assert sensors[name].default_status == DefaultSensorStatus.RUNNING
    for name in ALL:
        node = graph.get(AssetKey(name))
        assert node.group_name == "marts"
        upstream = {AssetKey("events_lake")}
        if name == "customer_usage_daily":  # it counts the dead letters too
            upstream.add(AssetKey("dead_letters"))
        if name in HISTORY:  # they read the users' activity state, not the lake's history
            upstream.add(AssetKey("user_activity"))
        assert node.parent_keys == upstream
        assert node.owners and node.description
        assert node.partitions_def.get_partition_keys()[0] == "2026-01-01"
        columns = node.metadata["dagster/column_schema"].columns
        assert all(c.description for c in columns) and columns[0].name == "event_date"
        assert {"duckdb", "parquet", "clickhouse"} <= set(node.kinds)
        assert graph.get_check_keys_for_assets({AssetKey(name)})
        assert node.automation_condition is not None  # today's partition: on_cron


def test_materializing_a_partition_records_its_figures_and_passing_checks(
    mart_env: Settings, d1_built
) -> None:
    instance, result = d1_built  # the run that built D1 on the known lake
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert sorted(c.asset_key.path[-1] for c in checks) == ALL and all(c.passed for c in checks)
    by_asset = {m.asset_key.path[-1]: m for m in result.asset_materializations_for_node("marts")}
    assert by_asset["campaign_performance_daily"].partition == str(D1)
    assert by_asset["campaign_performance_daily"].metadata["dagster/row_count"].value == 2
    assert str(D1) in by_asset["product_retention_weekly"].metadata[FINGERPRINTS].value
    assert impressions(mart_env, D1) == 6
    assert instance.get_materialized_partitions(AssetKey("campaign_performance_daily")) == {str(D1)}


def test_the_check_fails_on_a_mart_that_does_not_reconcile(
    mart_env: Settings, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    make_lake(mart_env.lake_dir)
    sql_dir = tmp_path / "sql"
    shutil.copytree(REPO_ROOT / "sql", sql_dir)
    mart = sql_dir / "marts" / "publisher_revenue_daily.sql"
    # a constructed mismatch: the mart counts each click twice
    mart.write_text(
        mart.read_text().replace(
            "count(*) FILTER (WHERE event_type = 'ad_click') AS clicks",
            "2 * count(*) FILTER (WHERE event_type = 'ad_click') AS clicks",
        )
    )
    monkeypatch.setenv("EP_SQL_DIR", str(sql_dir))
    result = build(Settings(), instance, D1, ["publisher_revenue_daily"])
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed
    assert evaluation.description == "1 of 10 figures differ from the day's events"
    assert "mart 11.0 vs events 9.0" in evaluation.metadata["details"].value


def test_late_events_rebuild_the_right_days(mart_env: Settings, instance: DagsterInstance) -> None:
    today = datetime.now(UTC).date()
    older, day_before, yesterday = (today - timedelta(days=n) for n in (3, 2, 1))
    for day in (older, day_before, yesterday):
        land(mart_env.lake_dir, [ad("impression", day, "cmp-1", "s-1", "mobile", 0.25, 0.125)])
    # the two days built, in one run (as `eventplatform marts build` builds a range)
    assert materialize_range(day_before, yesterday, instance=instance, settings=mart_env).success

    def evaluate():
        sensor = marts_late_data_sensor(mart_env.marts.sensor_interval_s)
        return sensor(
            build_sensor_context(instance=instance, resources=platform_resources(mart_env))
        )

    nothing_late = evaluate()
    assert nothing_late.skip_reason is not None and not nothing_late.run_requests

    # an impression for the day before yesterday lands late; `older` was never built
    land(mart_env.lake_dir, [ad("impression", day_before, "cmp-1", "s-1", "mobile", 0.25, 0.125)])
    land(mart_env.lake_dir, [ad("impression", older, "cmp-1", "s-1", "mobile", 0.25, 0.125)])
    requests = evaluate().run_requests
    assert all(isinstance(r, RunRequest) for r in requests)
    wanted = {r.partition_key: sorted(k.path[-1] for k in r.asset_selection) for r in requests}
    # the day itself, and the later day's marts that look back on it (MAU, retention)
    assert wanted == {
        str(day_before): sorted([*ALL, *STATE]),
        str(yesterday): sorted([*HISTORY, "user_activity"]),
    }
    assert requests[0].tags["eventplatform/reason"] == "late-data"
    assert evaluate().run_requests[0].run_key == requests[0].run_key  # same state, same run key

    for request in requests:  # run what the sensor asked for
        names = [k.path[-1] for k in request.asset_selection]
        assert build(mart_env, instance, date.fromisoformat(request.partition_key), names).success
    assert impressions(mart_env, day_before) == 2
    assert impressions(mart_env, yesterday) == 1
    rebuilt = evaluate()
    assert rebuilt.skip_reason is not None and not rebuilt.run_requests


def test_the_daily_schedule_builds_yesterday_after_the_day_closes(mart_env: Settings) -> None:
    (marts_daily,) = marts_schedules(mart_env)
    at = datetime(2026, 11, 24, 0, 30, tzinfo=UTC)
    daily = marts_daily(build_schedule_context(scheduled_execution_time=at))
    assert daily.partition_key == "2026-11-23"


def test_automation_builds_today_once_per_tick_after_events_landed(
    mart_env: Settings, instance: DagsterInstance
) -> None:
    """Declarative automation on a real instance: after an intra-day cron tick, today's
    partition of every mart is requested once the lake changed, and only once per tick."""
    defs = Definitions(
        assets=[marts_asset(mart_env), AssetSpec(LAKE), AssetSpec("dead_letters")],
        sensors=[marts_automation_sensor()],
        resources=platform_resources(mart_env),
    )
    now = datetime.now(UTC)
    tick = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)

    def evaluate(at: datetime, cursor=None):
        return evaluate_automation_conditions(
            defs=defs, instance=instance, evaluation_time=at, cursor=cursor
        )

    before = evaluate(tick - timedelta(minutes=1))
    assert before.total_requested == 0
    idle = evaluate(now, before.cursor)  # the tick passed, nothing landed since: nothing to do
    assert idle.total_requested == 0
    instance.report_runless_asset_event(AssetMaterialization(LAKE))  # a landing batch
    landed = evaluate(now + timedelta(seconds=1), idle.cursor)
    today = (now + timedelta(seconds=1)).date().isoformat()
    for name in [*ALL, *STATE]:  # the marts and the state they read
        assert landed.get_requested_partitions(AssetKey(name)) == {today}, name
    assert landed.total_requested == len(ALL) + len(STATE)
    instance.report_runless_asset_event(AssetMaterialization(LAKE))  # more, in the same tick
    again = evaluate(now + timedelta(seconds=2), landed.cursor)
    assert again.total_requested == 0

    sensor = defs.get_sensor_def("marts_automation")
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    assert sensor.run_tags == {"eventplatform/marts": "build"}  # one marts build at a time


def test_cli_backfills_a_date_range_and_sql_queries_both_engines(
    mart_env: Settings, tmp_path: Path, instance_template: Path
) -> None:
    make_lake(mart_env.lake_dir)
    # a Dagster home whose instance storage exists (Dagster creating it on a fresh home is
    # the Dagster CLI test's, below); the command writes its dagster.yaml into it
    shutil.copytree(instance_template, mart_env.dagster_home)
    env = {"EP_DATA_DIR": str(mart_env.data_dir), "DAGSTER_HOME": str(mart_env.dagster_home)}

    def cli(*args: str):
        """`eventplatform ...` in this process (Click's runner, the environment ``env``): the
        command's code is what a user runs, without paying a Python and a Dagster start per
        call; the Dagster CLI's own process is the next test's."""
        return CliRunner().invoke(cli_main, list(args), env=env, catch_exceptions=False)

    # the two days with ad events (D0..D2 was eight days, six without any, at 1-1.5 s each)
    built = cli("marts", "build", "--start", str(D1), "--end", str(D2))
    assert built.exit_code == 0, built.output[-3000:]
    assert f"{D1} campaign_performance_daily: 2 rows" in built.stdout
    assert f"{D2} campaign_performance_daily: 1 rows" in built.stdout
    assert "all reconciled" in built.stdout
    with DagsterInstance.from_config(str(mart_env.dagster_home)) as instance:
        assert len(instance.get_run_records()) == 1  # the range is one run
        for name in ALL:
            partitions = instance.get_materialized_partitions(AssetKey(name))
            assert partitions == {str(D1), str(D2)}, name

    query = (
        "SELECT event_date, sum(impressions) AS impressions, sum(cost) AS cost "
        "FROM campaign_performance_daily GROUP BY ALL ORDER BY event_date"
    )

    def sql(*args: str):  # `eventplatform sql`
        return cli("sql", *args)

    table = sql(query)
    assert table.exit_code == 0, table.output
    assert table.stdout.splitlines() == [
        "event_date | impressions | cost",
        "-----------+-------------+-----",
        "2026-11-16 |           6 |  4.5",
        "2026-11-17 |           1 | 0.25",
        "(2 rows)",
    ]
    on_clickhouse = sql("--clickhouse", "--format", "csv", query)
    assert on_clickhouse.exit_code == 0, on_clickhouse.output
    assert on_clickhouse.stdout.splitlines() == [
        "event_date,impressions,cost",
        "2026-11-16,6,4.5",
        "2026-11-17,1,0.25",
    ]
    out = tmp_path / "usage.parquet"
    exported = sql("--format", "parquet", "-o", str(out), "SELECT * FROM customer_usage_daily")
    # D1's nine rows (test_marts.py lists them) and D2's two (adnet's impression, shop's view)
    assert exported.exit_code == 0 and pq.read_table(out).num_rows == 9 + 2
    bad = sql("SELECT nope FROM campaign_performance_daily")
    assert bad.exit_code == 1 and "nope" in bad.stderr


def test_dagster_cli_materializes_a_partition_range_in_one_run(
    mart_env: Settings, instance_template: Path
) -> None:
    make_lake(mart_env.lake_dir)
    home = mart_env.dagster_home  # in memory (conftest.py)
    # its instance storage made (Dagster makes it on a fresh home in instance_template and
    # in test_cli_and_dagster.py's `dagster definitions validate`)
    shutil.copytree(instance_template, home)
    # Dagster's own CLI, in this process (its imports are warm): the same command line
    from dagster._cli import cli as dagster_cli

    result = CliRunner().invoke(
        dagster_cli,
        [
            "asset",
            "materialize",
            "-m",
            "eventplatform.definitions",
            "--select",
            "campaign_performance_daily,customer_usage_daily",
            "--partition-range",
            f"{D1}...{D2}",
        ],
        env={"EP_DATA_DIR": str(mart_env.data_dir), "DAGSTER_HOME": str(home)},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output[-3000:]
    with DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_materialized_partitions(AssetKey("customer_usage_daily")) == {
            str(D1),
            str(D2),
        }
        assert not instance.get_materialized_partitions(AssetKey("product_funnel_daily"))
        assert len(instance.get_run_records()) == 1
    assert impressions(mart_env, D1) == 6 and impressions(mart_env, D2) == 1


def test_the_check_alone_compares_the_stored_day_with_the_events(
    mart_env: Settings, d1_built, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run alone, the check looks at the built days of the late-arrival window."""
    monkeypatch.setenv("EP_MARTS_LATE_ARRIVAL_DAYS", "3650")  # the test's days are in 2026
    settings = Settings()
    from dagster import AssetCheckKey, AssetSelection, Definitions, define_asset_job

    instance, built = d1_built  # D1 built on the known lake
    assert built.success
    check = AssetSelection.checks(
        AssetCheckKey(AssetKey("campaign_performance_daily"), "reconciles_with_events")
    )

    job = (
        Definitions(
            assets=[marts_asset(settings)],
            jobs=[define_asset_job("check_alone", selection=check)],
            resources=platform_resources(settings),
        )
        .get_repository_def()
        .get_job("check_alone")
    )

    def run_check():  # as the UI's "Execute check" on a partition
        result = job.execute_in_process(instance=instance)
        assert not result.asset_materializations_for_node("marts")  # nothing rebuilt
        (evaluation,) = result.get_asset_check_evaluations()
        return evaluation

    assert run_check().passed
    con = duckdb.connect(str(mart_env.warehouse_path))  # someone edits the stored day
    con.execute("DELETE FROM campaign_performance_daily WHERE campaign_id = 'cmp-2'")
    con.close()
    failing = run_check()
    assert not failing.passed
    assert "sum(impressions) == " in failing.metadata["details"].value
    assert "mart 4.0 vs events 6.0" in failing.metadata["details"].value
