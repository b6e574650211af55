"""Budgets through the operator's surfaces: the CLI and the Dagster asset with its checks."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dagster import AssetKey, DagsterInstance, materialize

from eventplatform.budgets.cli import SAMPLE_CAMPAIGNS
from eventplatform.clickhouse import platform_clickhouse
from eventplatform.kafka.clients import make_admin
from eventplatform.kafka.topics import ensure_topics, platform_topics
from eventplatform.settings import REPO_ROOT, Settings
from eventplatform.simulate.traffic import TrafficGenerator, TrafficSpec, campaigns_csv
from eventplatform_tests.test_budgets import cost_events, land

CLI = [sys.executable, "-m", "eventplatform.cli"]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT
    )


def test_sample_campaigns_are_the_simulators_demo_campaigns() -> None:
    demo = TrafficGenerator(TrafficSpec(low_budgets=True)).campaigns
    assert SAMPLE_CAMPAIGNS.read_text() == campaigns_csv(demo)


def test_cli_loads_reports_and_watches(platform_env: Settings, tmp_path: Path) -> None:
    ensure_topics(make_admin(platform_env.kafka.bootstrap), platform_topics(platform_env.kafka))
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "advertiser,campaign_id,total_budget,daily_budget,currency,start,end,timezone,owner\n"
        "acme,x1,lots,5,USD,2026-01-01,2026-12-31,UTC,adnet\n"
    )
    failed = run_cli("campaigns", "load", str(bad))
    assert failed.returncode == 1
    assert "line 2: total_budget must be a number, got 'lots'" in failed.stderr

    loaded = run_cli("campaigns", "load", "--sample")
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.startswith("loaded 16 campaigns")

    now = datetime.now(UTC)
    land(
        platform_clickhouse(platform_env),
        cost_events(
            "adnet-00-cmp-1", [3.0, 3.0], at=now - timedelta(seconds=5), customer="adnet-00"
        ),
        "b1",
    )
    status = run_cli("campaigns", "status")
    assert "adnet-00-cmp-1" in status.stdout and "paused_daily" in status.stdout

    with DagsterInstance.ephemeral() as instance:
        from eventplatform.defs.budgets.assets import campaign_budgets
        from eventplatform.defs.resources import platform_resources

        result = materialize(
            [campaign_budgets], instance=instance, resources=platform_resources(platform_env)
        )
        assert result.success
        metadata = result.asset_materializations_for_node("campaign_budgets")[0].metadata
        assert metadata["signals_sent"].value == 1
        assert metadata["status_paused_daily"].value == 1

    watched = run_cli("campaigns", "watch", "--max-signals", "1", "--timeout", "60")
    assert watched.returncode == 0, watched.stderr
    assert "adnet-00-cmp-1" in watched.stdout and "PAUSE" in watched.stdout
    assert "today 6.00/5.00" in watched.stdout


def test_overspend_check_fails_on_overspend_and_passes_otherwise(platform_env: Settings) -> None:
    from eventplatform.definitions import build_defs

    defs = build_defs(platform_env)
    ensure_topics(make_admin(platform_env.kafka.bootstrap), platform_topics(platform_env.kafka))
    clickhouse = platform_clickhouse(platform_env)
    from eventplatform.budgets.campaigns import load_campaigns, parse_campaigns

    load_campaigns(
        clickhouse,
        parse_campaigns(
            "advertiser,campaign_id,total_budget,daily_budget,currency,start,end,timezone,owner\n"
            "acme,ok,100,100,USD,2026-01-01,2030-12-31,UTC,adnet\n"
            "acme,over,10,100,USD,2026-01-01,2030-12-31,UTC,adnet\n"
        ),
    )
    now = datetime.now(UTC) - timedelta(seconds=5)
    land(clickhouse, cost_events("ok", [1.0], at=now), "b1")

    job = defs.resolve_implicit_global_asset_job_def()

    def check_results() -> dict:
        """Materialize the asset as the UI would: its checks run with it."""
        with DagsterInstance.ephemeral() as instance:
            result = job.execute_in_process(
                instance=instance, asset_selection=[AssetKey("campaign_budgets")]
            )
            return {e.check_name: e for e in result.get_asset_check_evaluations()}

    passing = check_results()
    assert passing["no_overspend"].passed

    # A constructed overspend: 10.05 spent on a budget of 10 is within the 1% tolerance,
    # 10.50 is not.
    land(clickhouse, cost_events("over", [10.05], at=now, prefix="a"), "b2")
    assert check_results()["no_overspend"].passed
    land(clickhouse, cost_events("over", [0.45], at=now, prefix="b"), "b3")
    failing = check_results()["no_overspend"]
    assert not failing.passed
    assert failing.description == "overspent: over total 10.50 > budget 10.00 (+0.50 USD)"
    assert failing.metadata["overspent_campaigns"].value == 1
