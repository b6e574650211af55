"""Landing through Dagster: sensors on a real instance, the run's materializations, pauses, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from confluent_kafka import TopicPartition
from dagster import (
    AssetKey,
    DagsterInstance,
    DagsterRunStatus,
    RunRequest,
    SkipReason,
    build_sensor_context,
)

from eventplatform.budgets.campaigns import load_campaigns, parse_campaigns
from eventplatform.budgets.signals import read_last_signals
from eventplatform.clickhouse import platform_clickhouse
from eventplatform.defs.ingest.landing import land_events
from eventplatform.defs.ingest.sensors import SHARD_TAG, land_sensor
from eventplatform.defs.resources import platform_resources
from eventplatform.events import EventCodec
from eventplatform.kafka.clients import make_consumer, make_producer
from eventplatform.land.lander import Manifest
from eventplatform.land.sources import build_lander
from eventplatform.settings import REPO_ROOT, Settings
from eventplatform_tests.helpers import decoded_event
from eventplatform_tests.test_land import clickhouse_count, produce_events


def land_raw_shard_in_process(instance: DagsterInstance, settings: Settings) -> None:
    """One landing run of the one raw shard, as a Dagster run in this process."""
    settings.land.raw_shards = 1
    result = land_events.execute_in_process(
        run_config={"ops": {"land_shard": {"config": {"source": "raw", "shard": 0}}}},
        instance=instance,
        resources=platform_resources(settings),
    )
    assert result.success


def evaluate(instance: DagsterInstance, settings: Settings):
    context = build_sensor_context(instance=instance, resources=platform_resources(settings))
    return land_sensor("raw", settings.land.sensor_interval_s)(context), context.cursor


def test_sensor_requests_a_run_per_shard_with_lag_and_none_in_flight(topics: Settings) -> None:
    settings = topics
    settings.land.raw_shards = 2
    with DagsterInstance.ephemeral() as instance:
        result, cursor = evaluate(instance, settings)
        assert isinstance(result, SkipReason)  # nothing produced yet: no lag
        assert orjson.loads(cursor) == {"lag": {"0": 0, "1": 0}, "in_flight": []}

        producer = make_producer(settings.kafka.bootstrap)
        codec = EventCodec()
        for partition in range(4):  # partitions 0, 2 are shard 0; 1, 3 shard 1
            event = decoded_event("click", "c", datetime.now(UTC), event_id=f"e{partition}")
            producer.produce(
                settings.kafka.raw_topic, value=codec.encode(event), partition=partition
            )
        assert producer.flush(10) == 0

        requests, cursor = evaluate(instance, settings)
        assert sorted(r.tags[SHARD_TAG] for r in requests) == [
            f"{settings.kafka.raw_topic}/0",
            f"{settings.kafka.raw_topic}/1",
        ]
        assert all(isinstance(r, RunRequest) for r in requests)
        assert requests[0].run_config["ops"]["land_shard"]["config"]["source"] == "raw"
        assert orjson.loads(cursor)["lag"] == {"0": 2, "1": 2}

        # A run of shard 0 in flight: only shard 1 is requested.
        instance.create_run_for_job(
            job_def=land_events,
            run_config=requests[0].run_config,
            tags={SHARD_TAG: f"{settings.kafka.raw_topic}/0"},
            status=DagsterRunStatus.STARTED,
        )
        requests, cursor = evaluate(instance, settings)
        assert [r.tags[SHARD_TAG] for r in requests] == [f"{settings.kafka.raw_topic}/1"]
        assert orjson.loads(cursor)["in_flight"] == [0]

        build_lander(settings, "raw", 1).run()
        result, cursor = evaluate(instance, settings)
        assert isinstance(result, SkipReason)
        assert orjson.loads(cursor)["lag"] == {"0": 2, "1": 0}


def test_a_landing_run_reports_batches_and_pauses_an_exhausted_campaign(
    topics: Settings,
) -> None:
    settings = topics
    now = datetime.now(UTC)
    load_campaigns(
        platform_clickhouse(settings),
        parse_campaigns(
            "advertiser,campaign_id,total_budget,daily_budget,currency,start,end,timezone,owner\n"
            f"acme,cmp-1,100,10,USD,{now - timedelta(days=1):%Y-%m-%d},"
            f"{now + timedelta(days=5):%Y-%m-%d},UTC,adnet\n"
        ),
    )
    producer = make_producer(settings.kafka.bootstrap)
    codec = EventCodec()
    for i in range(12):  # 12 x 1.0 against a daily budget of 10
        event = decoded_event(
            "impression",
            "adnet",
            now,
            event_id=f"imp-{i}",
            payload={"campaign_id": "cmp-1", "cost": 1.0, "revenue": 0.5},
        )
        producer.produce(settings.kafka.raw_topic, key=b"adnet", value=codec.encode(event))
    assert producer.flush(10) == 0

    with DagsterInstance.ephemeral() as instance:
        land_raw_shard_in_process(instance, settings)
        lake = instance.get_latest_materialization_event(AssetKey("events_lake"))
        ch = instance.get_latest_materialization_event(AssetKey("events_clickhouse"))
        assert lake is not None and ch is not None
        metadata = lake.asset_materialization.metadata
        assert metadata["rows"].value == 12 and metadata["lag"].value == 0
        assert metadata["latency_p99_ms"].value > 0
        assert metadata["parquet_bytes"].value > 0
        # The budget controller ran after the batch: campaign_budgets shows it (observed).
        observed = instance.fetch_observations(AssetKey("campaign_budgets"), limit=1).records
        budgets = observed[0].asset_observation.metadata
        assert budgets["status_paused_daily"].value == 1 and budgets["campaigns"].value == 1

    signal_value = read_last_signals(settings.kafka.bootstrap, settings.kafka.control_topic)
    assert signal_value["cmp-1"]["action"] == "pause"
    assert signal_value["cmp-1"]["status"] == "paused_daily"
    assert clickhouse_count(settings, "SELECT count() FROM {db}.events") == [(12,)]


def test_an_interrupted_run_stops_between_batches(topics: Settings, tmp_path: Path) -> None:
    """A run told to stop with SIGINT (as a shutdown sends it; Dagster's termination from the UI
    interrupts the same way) lands and commits the batch in hand, leaves no manifest, and ends
    normally: it stopped where it should."""
    settings = topics
    produce_events(settings, 2000)
    settings.dagster_home.mkdir(parents=True)
    config = tmp_path / "run.yaml"
    config.write_text("ops:\n  land_shard:\n    config:\n      source: raw\n      shard: 0\n")
    env = {
        **os.environ,
        "EP_LAND_RAW_SHARDS": "1",
        "EP_LAND_BATCH_MAX_RECORDS": "50",
        "EP_LAND_IDLE_STOP_S": "120",
    }
    command = [
        "job",
        "execute",
        "-m",
        "eventplatform.definitions",
        "-j",
        "land_events",
        "-c",
        str(config),
    ]
    log_path = tmp_path / "run.log"  # a file, not a pipe: nobody reads while the run logs
    with open(log_path, "wb") as log_file:
        runner = subprocess.Popen(
            [sys.executable, "-m", "dagster", *command],
            cwd=REPO_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while not list(settings.lake_dir.rglob("*.parquet")) and time.monotonic() < deadline:
        assert runner.poll() is None, log_path.read_text()
        time.sleep(0.05)
    runner.send_signal(signal.SIGINT)
    runner.wait(timeout=120)
    output = log_path.read_text()
    assert runner.returncode == 0, output
    assert "stopped: asked to stop" in output
    manifest = Manifest.of_shard(
        settings.lake_dir, settings.land.group_id, settings.kafka.raw_topic, 0, 1
    )
    assert not manifest.path.exists()
    # What was landed is exactly what was committed: the run did not stop inside a batch.
    landed = clickhouse_rows(settings)
    assert 0 < landed == committed(settings)
    # A new run takes over exactly where it stopped.
    settings.land.raw_shards = 1
    build_lander(settings, "raw", 0).run()
    assert clickhouse_count(settings, "SELECT count(), uniqExact(event_id) FROM {db}.events") == [
        (2000, 2000)
    ]


def committed(settings: Settings, topic: str | None = None, partitions: int = 4) -> int:
    """Messages the landing group has committed on a topic (events.raw unless told)."""
    consumer = make_consumer(settings.kafka.bootstrap, settings.land.group_id)
    offsets = consumer.committed(
        [TopicPartition(topic or settings.kafka.raw_topic, p) for p in range(partitions)],
        timeout=10,
    )
    consumer.close()
    return sum(max(0, tp.offset) for tp in offsets)


def clickhouse_rows(settings: Settings) -> int:
    return clickhouse_count(settings, "SELECT count() FROM {db}.events")[0][0]
