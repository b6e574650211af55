"""Faults on purpose: sinks that fail. Nothing is lost.

Every test ends by reconciling: what the collector accepted (or what was produced) is in the
lake and in ClickHouse exactly once. No fakes: a real broker is stopped and started, a real
ClickHouse table disappears, a real folder is in the way, a real 256 KiB tmpfs fills up.
"""

from __future__ import annotations

import os
import subprocess
import sys

import duckdb
import pytest

from eventplatform.clickhouse import platform_clickhouse
from eventplatform.land.lander import Manifest
from eventplatform.land.sources import build_lander
from eventplatform.settings import Settings
from eventplatform_tests.test_land import clickhouse_count, produce_events
from eventplatform_tests.test_land_dagster import committed

LAND = [sys.executable, "-m", "eventplatform.cli", "land"]


def lake_ids(settings: Settings) -> list[str]:
    files = list((settings.lake_dir / "events").rglob("*.parquet"))
    if not files:
        return []
    return [
        r[0]
        for r in duckdb.sql(
            f"SELECT event_id FROM read_parquet('{settings.lake_dir}/events/**/*.parquet')"
        ).fetchall()
    ]


def assert_landed_once(settings: Settings, expected_ids: set[str]) -> None:
    ids = lake_ids(settings)
    assert len(ids) == len(set(ids)) == len(expected_ids) and set(ids) == expected_ids
    rows = clickhouse_count(settings, "SELECT count(), uniqExact(event_id) FROM {db}.events")
    assert rows == [(len(expected_ids), len(expected_ids))]


@pytest.fixture
def produced(topics: Settings) -> tuple[Settings, set[str]]:
    topics.land.raw_shards = 1
    topics.land.idle_stop_s = 1.0
    return topics, set(produce_events(topics, 400))


def manifest_of(settings: Settings) -> Manifest:
    return Manifest.of_shard(
        settings.lake_dir, settings.land.group_id, settings.kafka.raw_topic, 0, 1
    )


def test_failing_clickhouse_insert_fails_the_run_and_commits_nothing(produced) -> None:
    settings, ids = produced
    lander = build_lander(settings, "raw", 0)  # the tables exist now
    clickhouse = platform_clickhouse(settings)
    with clickhouse.session() as client:
        client.command(f"RENAME TABLE {clickhouse.database}.events TO {clickhouse.database}.gone")
    with pytest.raises(Exception, match=r"(?i)events.*(does not exist|doesn't exist|unknown)"):
        lander.run()
    assert committed(settings) == 0
    assert manifest_of(settings).read() is not None  # the batch in flight is remembered
    assert lake_ids(settings)  # the lake was written before ClickHouse failed

    with clickhouse.session() as client:
        client.command(f"RENAME TABLE {clickhouse.database}.gone TO {clickhouse.database}.events")
    summary = build_lander(settings, "raw", 0).run()
    assert summary.replayed_batches == 1
    assert_landed_once(settings, ids)
    assert committed(settings) == 400
    assert manifest_of(settings).read() is None


def test_unwritable_lake_fails_the_run_and_commits_nothing(produced) -> None:
    settings, ids = produced
    settings.lake_dir.mkdir(parents=True)
    (settings.lake_dir / "events").write_text("a file where the events folder should be")
    with pytest.raises(OSError):
        build_lander(settings, "raw", 0).run()
    assert committed(settings) == 0  # (ClickHouse may hold the batch: its token dedupes it)

    (settings.lake_dir / "events").unlink()
    assert build_lander(settings, "raw", 0).run().replayed_batches == 1
    assert_landed_once(settings, ids)


def test_full_disk_fails_the_run_and_leaves_no_partial_file(produced) -> None:
    settings, ids = produced
    folder = settings.lake_dir / "events"
    folder.mkdir(parents=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    assert mount.returncode == 0, f"this test needs root to mount a tmpfs: {mount.stderr}"
    try:
        (folder / "ballast").write_bytes(b"\0" * (250 * 1024))  # leave a few KiB
        with pytest.raises(OSError, match="No space left on device"):
            build_lander(settings, "raw", 0).run()
        assert committed(settings) == 0
        assert not [p for p in folder.rglob("*") if p.is_file() and p.name != "ballast"]
    finally:
        subprocess.run(["umount", str(folder)], check=True)
    assert build_lander(settings, "raw", 0).run().replayed_batches == 1
    assert_landed_once(settings, ids)
    assert os.listdir(folder)  # landed on the real disk once there was room
