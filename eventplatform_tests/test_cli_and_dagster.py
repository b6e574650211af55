"""The operator's surface: the `eventplatform` command and the Dagster definitions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from dagster import DagsterInstance, materialize

from eventplatform.cli import main as cli_main
from eventplatform.kafka.broker import free_port
from eventplatform.kafka.clients import make_admin
from eventplatform.settings import REPO_ROOT, Settings

CLI = [sys.executable, "-m", "eventplatform.cli"]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO_ROOT,
    )


def test_settings_are_overridable_by_environment(tmp_path: Path) -> None:
    # `eventplatform settings` in this process (Click's runner sets the environment for the
    # call): the settings are read from the environment the same way in a child process
    result = CliRunner().invoke(
        cli_main,
        ["settings"],
        env={
            "EP_DATA_DIR": str(tmp_path),
            "EP_KAFKA_PORT": "19999",
            "EP_CLICKHOUSE_DATABASE": "analytics",
        },
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    effective = json.loads(result.stdout)
    assert effective["kafka.port"] == 19999
    assert effective["derived.kafka_bootstrap"] == "127.0.0.1:19999"
    assert effective["derived.clickhouse_dsn"] == f"chdb://{tmp_path}/clickhouse"
    assert effective["derived.lake_dir"] == f"{tmp_path}/lake"
    assert effective["clickhouse.database"] == "analytics"


def test_cli_starts_reports_and_stops_a_local_broker(tmp_path: Path, kafka_libs: Path) -> None:
    env = {
        "EP_DATA_DIR": str(tmp_path),
        "EP_KAFKA_PORT": str(free_port()),
        "EP_KAFKA_CONTROLLER_PORT": str(free_port()),
        "KAFKA_BOOTSTRAP_SERVERS": "",
    }
    try:
        started = run_cli("kafka", "start", env=env)
        assert started.returncode == 0, started.stderr
        assert "running (pid" in started.stdout
        assert (tmp_path / "kafka" / "logs" / "meta.properties").exists()

        status = run_cli("kafka", "status", env=env)
        assert status.returncode == 0 and "running (pid" in status.stdout

        ensured = run_cli("topics", "ensure", env=env)
        assert ensured.returncode == 0, ensured.stderr
        assert ensured.stdout.splitlines() == [
            "events.raw: created",
            "events.overflow: created",
            "events.dlq: created",
            "campaign.control: created",
        ]
        again = run_cli("topics", "ensure", env=env)
        assert again.stdout.count(": ok") == 4
    finally:
        stopped = run_cli("kafka", "stop", env=env)
    assert stopped.returncode == 0 and stopped.stdout.strip() == "kafka: stopped"
    after = run_cli("kafka", "status", env=env)
    assert after.returncode == 1 and "not running" in after.stdout


def test_external_cluster_means_no_broker_is_started(tmp_path: Path, bootstrap: str) -> None:
    env = {"EP_DATA_DIR": str(tmp_path), "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    started = run_cli("kafka", "start", env=env)
    assert started.returncode == 0
    assert started.stdout.strip() == f"using external Kafka at {bootstrap}; starting no broker"
    assert not (tmp_path / "kafka").exists()
    status = run_cli("kafka", "status", env=env)
    assert status.returncode == 0 and "answering" in status.stdout


def test_topics_ensure_exits_nonzero_on_drift(platform_env: Settings, unique: str) -> None:
    assert run_cli("topics", "ensure").returncode == 0
    drifted = run_cli("topics", "ensure", env={"EP_KAFKA_RAW_PARTITIONS": "6"})
    assert drifted.returncode == 1
    assert f"events.raw.{unique}: differs" in drifted.stdout
    assert "partitions: 4, specified 6" in drifted.stdout
    assert "some topics differ" in drifted.stderr


def test_dagster_definitions_validate(tmp_path: Path) -> None:
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text((REPO_ROOT / "dagster.yaml").read_text())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dagster",
            "definitions",
            "validate",
            "-w",
            str(REPO_ROOT / "workspace.yaml"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=180,
        env={**os.environ, "DAGSTER_HOME": str(dagster_home)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "Validation successful for code location eventplatform" in output
    assert "WARNING" not in output  # e.g. dg.toml's code location name must match workspace's


def test_kafka_topics_asset_creates_the_platform_topics(platform_env: Settings) -> None:
    from eventplatform.defs.ingest.assets import kafka_topics
    from eventplatform.defs.resources import platform_resources

    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [kafka_topics], instance=instance, resources=platform_resources(platform_env)
        )
        assert result.success
        materialization = result.asset_materializations_for_node("kafka_topics")[0]
        assert "created" in materialization.metadata["topics"].value
    topics = make_admin(platform_env.kafka.bootstrap).list_topics(timeout=10).topics
    assert len(topics[platform_env.kafka.raw_topic].partitions) == 4
    assert platform_env.kafka.control_topic in topics


def test_the_topics_are_observed_with_partitions_end_offsets_and_lag(
    platform_env: Settings,
) -> None:
    """`kafka_topics` between materializations: the sensor's observation says what is there."""
    from dagster import build_sensor_context

    from eventplatform.defs.ingest.observe import observe_kafka_topics
    from eventplatform.defs.resources import platform_resources
    from eventplatform.kafka.clients import make_producer
    from eventplatform.kafka.topics import ensure_topics, platform_topics

    k = platform_env.kafka
    ensure_topics(make_admin(k.bootstrap), [t for t in platform_topics(k) if t.name != k.dlq_topic])
    producer = make_producer(k.bootstrap)
    for i in range(3):
        producer.produce(k.raw_topic, value=b"x", partition=i)
    assert producer.flush(10) == 0

    context = build_sensor_context(resources=platform_resources(platform_env))
    (observation,) = observe_kafka_topics(context).asset_events
    metadata = {key: value.value for key, value in observation.metadata.items()}
    assert observation.asset_key.path == ["kafka_topics"]
    assert metadata["raw_partitions"] == 4 and metadata["raw_end_offsets"] == 3
    assert metadata["raw_lag"] == 3  # the landing group has committed nothing yet
    assert metadata["overflow_end_offsets"] == 0 and metadata["overflow_lag"] == 0
    assert metadata["dlq_partitions"] == 0  # not created: reported, the others still observed
    assert f"| {k.dlq_topic} | missing |" in metadata["topics"]
