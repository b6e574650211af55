"""Dagster's instance on PostgreSQL: the generated dagster.yaml, the local server's lifecycle,
and the sensor -> landing run -> materializations path with runs and event logs in PostgreSQL.

The server is the real one from Debian's ``postgresql`` package, started by
``eventplatform.postgres`` as `eventplatform run` starts it. Its data folder is made under
/tmp, not pytest's temporary folder: as root, the server runs as the ``postgres`` user, and
pytest's folders are closed to other users.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from dagster import (
    AssetKey,
    DagsterInstance,
    DagsterRunStatus,
    RunRequest,
    RunsFilter,
    SkipReason,
    build_sensor_context,
    execute_job,
    job,
    op,
)
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.storage.runs import SqliteRunStorage
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

from eventplatform.cli import main
from eventplatform.defs.ingest.sensors import SHARD_TAG, land_sensor
from eventplatform.defs.resources import platform_resources
from eventplatform.events import EventCodec
from eventplatform.kafka.clients import make_producer
from eventplatform.postgres import LocalPostgres, PostgresConfig, PostgresError
from eventplatform.runner import instance_config, prepare_dagster_home
from eventplatform.settings import REPO_ROOT, Settings, get_settings
from eventplatform_tests.helpers import decoded_event
from eventplatform_tests.test_land import clickhouse_count


def server_folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="ep-postgres-", dir="/tmp"))


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[LocalPostgres]:
    """A real PostgreSQL on a free loopback port, for this module's tests."""
    folder = server_folder()
    server = LocalPostgres(PostgresConfig.on_free_port(folder))
    server.start()
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


def use_server(monkeypatch: pytest.MonkeyPatch, server: LocalPostgres) -> Settings:
    """Settings whose instance uses ``server`` as the platform's local PostgreSQL."""
    monkeypatch.setenv("EP_DAGSTER_STORAGE", "postgres")
    monkeypatch.setenv("EP_DAGSTER_POSTGRES_PORT", str(server.config.port))
    monkeypatch.setenv("EP_DAGSTER_POSTGRES_DATA_DIR", str(server.config.data_dir))
    return Settings()


@pytest.fixture
def own_folders(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """This test's data folder and Dagster home. The `eventplatform` command, invoked in this
    process, reads the cached settings: the cache is cleared for it, and after."""
    monkeypatch.setenv("EP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    yield


def test_the_instance_is_sqlite_by_default_and_postgres_with_one_setting(
    own_folders: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo_config = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    assert "storage" not in repo_config  # the commented-out block is gone: it is generated
    home = prepare_dagster_home(Settings())
    assert yaml.safe_load((home / "dagster.yaml").read_text()) == repo_config
    with DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, SqliteRunStorage)

    monkeypatch.setenv("EP_DAGSTER_STORAGE", "postgres")
    local = instance_config(Settings())
    assert local["storage"] == {
        "postgres": {"postgres_url": "postgresql+psycopg2://dagster@127.0.0.1:5433/dagster"}
    }
    assert local["run_coordinator"] == repo_config["run_coordinator"]

    monkeypatch.setenv("EP_DAGSTER_POSTGRES_URL", "postgresql://dagster:s3cret@db.example/dagster")
    with pytest.raises(PostgresError, match=r"must start with postgresql\+psycopg2://"):
        instance_config(Settings())
    secret_url = "postgresql+psycopg2://dagster:s3cret@db.example:5432/dagster"
    monkeypatch.setenv("EP_DAGSTER_POSTGRES_URL", secret_url)
    settings = Settings()
    home = prepare_dagster_home(settings)
    written = (home / "dagster.yaml").read_text()
    assert "s3cret" not in written  # the URL is read from the environment by Dagster
    assert yaml.safe_load(written)["storage"] == {
        "postgres": {"postgres_url": {"env": "EP_DAGSTER_POSTGRES_URL"}}
    }
    assert "s3cret" not in str(settings.describe())
    said = CliRunner().invoke(main, ["postgres", "start"])
    assert said.exit_code == 0 and "managing none here" in said.output  # nothing started


def test_postgres_status_exits_1_when_no_server_runs(own_folders: None) -> None:
    said = CliRunner().invoke(main, ["postgres", "status"])
    assert said.exit_code == 1 and "postgres: not running" in said.output


@op
def nothing() -> None:
    """Does nothing: the job only gives the instance a run to keep."""


@job
def noop() -> None:
    nothing()


def pg_instance(server: LocalPostgres, home: Path) -> DagsterInstance:
    home.mkdir(exist_ok=True)
    storage = {"storage": {"postgres": {"postgres_url": server.config.url}}}
    (home / "dagster.yaml").write_text(yaml.safe_dump(storage))
    return DagsterInstance.from_config(str(home))


def materializations(instance: DagsterInstance, key: str) -> list:
    records = instance.fetch_materializations(AssetKey(key), limit=100).records
    return [record.asset_materialization for record in records]


def test_local_server_restarts_with_its_data_and_says_why_it_cannot_start(
    postgres_server: LocalPostgres, tmp_path: Path
) -> None:
    first = postgres_server.start()  # already running: found, not started twice
    assert first.running and first.answering
    with pg_instance(postgres_server, tmp_path / "home") as instance:
        run = instance.create_run_for_job(job_def=noop, run_config={})
    postgres_server.stop()
    assert not postgres_server.status().running
    assert postgres_server.start().answering
    with pg_instance(postgres_server, tmp_path / "home") as instance:
        assert instance.get_run_by_id(run.run_id) is not None  # kept across the restart

    clash = LocalPostgres(PostgresConfig(server_folder(), port=postgres_server.config.port))
    with pytest.raises(PostgresError, match=f"port {postgres_server.config.port} .* is taken"):
        clash.start()
    shutil.rmtree(clash.config.data_dir, ignore_errors=True)

    if os.geteuid() == 0:  # the server's user cannot enter pytest's folders (mode 700, root's)
        closed = LocalPostgres(PostgresConfig.on_free_port(tmp_path / "pg"))
        with pytest.raises(PostgresError, match=r"cannot write .*EP_DAGSTER_POSTGRES_DATA_DIR"):
            closed.start()


def test_sensor_landing_run_and_materializations_on_postgres(
    topics: Settings, postgres_server: LocalPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reconstructed job's resources come from get_settings(), which the variables below
    # make anew (with the defaults' 60 s idle stop, each of the two runs would idle a minute).
    monkeypatch.setenv("EP_LAND_IDLE_STOP_S", str(topics.land.idle_stop_s))
    monkeypatch.setenv("EP_LAND_RAW_SHARDS", "2")
    home = prepare_dagster_home(use_server(monkeypatch, postgres_server))
    settings = get_settings()
    assert settings.kafka.raw_topic == topics.kafka.raw_topic  # this test's own topics
    producer = make_producer(settings.kafka.bootstrap)
    codec = EventCodec()
    now = datetime.now(UTC)
    for i in range(40):  # partitions 0..3: shard 0 gets 0 and 2, shard 1 gets 1 and 3
        event = decoded_event("click", "acme", now, event_id=f"pg-{i}")
        producer.produce(settings.kafka.raw_topic, value=codec.encode(event), partition=i % 4)
    assert producer.flush(10) == 0

    job = ReconstructableRepository.for_module(
        "eventplatform.definitions", "defs", working_directory=str(REPO_ROOT)
    ).get_reconstructable_job("land_events")
    land_raw = land_sensor("raw", settings.land.sensor_interval_s)
    with DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        context = build_sensor_context(instance=instance, resources=platform_resources(settings))
        requests = land_raw(context)
        assert [r.tags[SHARD_TAG] for r in requests] == [
            f"{settings.kafka.raw_topic}/0",
            f"{settings.kafka.raw_topic}/1",
        ]
        for request in requests:
            assert isinstance(request, RunRequest)
            result = execute_job(job, instance, run_config=request.run_config, tags=request.tags)
            assert result.success

        records = instance.get_run_records(filters=RunsFilter(job_name="land_events"))
        assert sorted(r.dagster_run.tags[SHARD_TAG] for r in records) == [
            f"{settings.kafka.raw_topic}/0",
            f"{settings.kafka.raw_topic}/1",
        ]
        assert {r.dagster_run.status for r in records} == {DagsterRunStatus.SUCCESS}
        landed = [m.metadata["rows"].value for m in materializations(instance, "events_lake")]
        assert sum(landed) == 40
        assert materializations(instance, "events_clickhouse")

        again = build_sensor_context(instance=instance, resources=platform_resources(settings))
        assert isinstance(land_raw(again), SkipReason)  # no lag left, nothing to start
    assert clickhouse_count(settings, "SELECT count() FROM {db}.events") == [(40,)]
