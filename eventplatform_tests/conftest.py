"""Shared fixtures: one real Kafka broker per test session, unique topics per test.

Tests are marked by the services their fixtures start (``pytest -m "not kafka"`` is the fast
tier, README, Tests): ``kafka`` when the fixture closure holds the session broker or the
broker's jars (a test that starts brokers of its own), ``postgres`` when it holds a PostgreSQL
server, ``marts`` when it builds the marts (``mart_env``). Nothing is marked by hand, so a new
test is in the right tier by what it asks for.

Dagster instances of the tests live in memory (``memory_path``): Dagster's SQLite storage
syncs each event to disk (about 700 fdatasync calls per run of the marts), which on a busy
disk costs more than the run itself, and no test here is about the instance surviving a
power cut.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eventplatform.clickhouse import ClickHouse
from eventplatform.kafka.broker import BrokerConfig, LocalBroker, install_jars
from eventplatform.settings import REPO_ROOT, Settings, get_settings

# fixture -> marker: a test whose fixture closure holds the fixture gets the marker
SERVICE_FIXTURES: dict[str, str] = {
    "kafka_broker": "kafka",
    "bootstrap": "kafka",
    "kafka_libs": "kafka",
    "postgres_server": "postgres",
    # the marts' tests build the DuckDB warehouse and mirror it into the embedded ClickHouse
    # for several days per test: 10-30 s each on this machine, no broker needed
    "mart_env": "marts",
}


def _worker_count() -> int:
    return min(len(os.sched_getaffinity(0)), 4)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """A run that leaves the broker's tests out (``-m "not kafka"``, the fast tier) spreads its
    tests over the machine's cores (pytest-xdist; ``-n 0`` keeps one process). Its tests share
    nothing but the read-only repository. Runs that include the broker's tests stay in one
    process: they share one broker per session, some restart brokers of their own, and the
    fault tests time recoveries that a second busy worker would skew."""
    leaves_kafka_out = "not kafka" in (config.option.markexpr or "")
    if (
        leaves_kafka_out
        and getattr(config.option, "numprocesses", 0) is None  # None: xdist is on, -n not given
        and "PYTEST_XDIST_WORKER" not in os.environ
        and not config.option.collectonly
        and _worker_count() > 1
    ):
        config.option.numprocesses = _worker_count()


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection imported (Dagster, pyarrow, every test module) lives for the whole
    session: freeze it out of the cyclic collector's walks, which otherwise go over it again
    at every full collection of the session's many Dagster objects."""
    gc.freeze()


def pytest_sessionfinish(session: pytest.Session) -> None:
    gc.unfreeze()  # collectable again at exit (nanobind reports what is not as leaks)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with the services its fixtures need (see the module's docstring)."""
    for item in items:
        closure = set(getattr(item, "fixturenames", ()))
        for marker in sorted({m for f, m in SERVICE_FIXTURES.items() if f in closure}):
            item.add_marker(marker)


@pytest.fixture(scope="session")
def kafka_libs() -> Path:
    """The broker's jars (resolved from Maven Central once, cached like `make setup` does)."""
    settings = Settings()
    if settings.kafka.kafka_home:
        return settings.kafka_libs_dir
    return install_jars(settings.kafka_libs_dir)


@pytest.fixture(scope="session")
def kafka_broker(
    tmp_path_factory: pytest.TempPathFactory, kafka_libs: Path
) -> Iterator[LocalBroker]:
    """A real Apache Kafka broker (KRaft) on free loopback ports, for the whole session."""
    data_dir = tmp_path_factory.mktemp("kafka")
    broker = LocalBroker(BrokerConfig.on_free_ports(kafka_libs, data_dir))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def bootstrap(kafka_broker: LocalBroker) -> str:
    return kafka_broker.config.bootstrap


@pytest.fixture
def unique() -> str:
    """A short unique suffix for this test's topics, groups and folders."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def platform_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bootstrap: str, unique: str
) -> Iterator[Settings]:
    """Settings pointed at the session broker, this test's own topics and data folder.

    Everything that reads settings (CLI, Dagster resources, child processes) sees the same.
    """
    env = {
        "EP_DATA_DIR": str(tmp_path / "data"),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "EP_KAFKA_RAW_TOPIC": f"events.raw.{unique}",
        "EP_KAFKA_OVERFLOW_TOPIC": f"events.overflow.{unique}",
        "EP_KAFKA_DLQ_TOPIC": f"events.dlq.{unique}",
        "EP_KAFKA_CONTROL_TOPIC": f"campaign.control.{unique}",
        "EP_KAFKA_RAW_PARTITIONS": "4",
        "DAGSTER_HOME": str(tmp_path / "dagster"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield get_settings()


@pytest.fixture
def topics(platform_env: Settings) -> Settings:
    """``platform_env`` with the platform's topics created, and landing runs that end soon."""
    from eventplatform.kafka.clients import make_admin
    from eventplatform.kafka.topics import ensure_topics, platform_topics

    ensure_topics(make_admin(platform_env.kafka.bootstrap), platform_topics(platform_env.kafka))
    platform_env.land.idle_stop_s = 1.0
    platform_env.land.batch_max_wait_s = 0.3
    return platform_env


@pytest.fixture(scope="session")
def memory_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder in memory for the session (under /dev/shm, removed after the session); on a
    machine without a writable /dev/shm, a folder of the session's temporary folder."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path_factory.mktemp("memory")
        return
    path = Path(tempfile.mkdtemp(prefix="eventplatform-tests-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def memory_path(memory_dir: Path, request: pytest.FixtureRequest) -> Path:
    """Like ``tmp_path``, in memory (``memory_dir``): a new empty folder for this test."""
    return Path(tempfile.mkdtemp(prefix=request.node.name[:40] + "-", dir=memory_dir))


@pytest.fixture(scope="session")
def clickhouse_with_ddl(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[Path, str], ClickHouse]:
    """``make(folder, database)``: an embedded ClickHouse in ``folder`` with the platform's DDL
    (``sql/clickhouse``) applied to ``database``, as ``ClickHouse(...).apply_ddl(...)`` leaves
    it. The DDL is applied once per database and session (0.25-0.5 s each time), each call
    copies that folder (tens of ms). Tests about the DDL itself apply it themselves."""
    templates: dict[str, Path] = {}

    def make(folder: Path, database: str) -> ClickHouse:
        if database not in templates:
            template = tmp_path_factory.mktemp(f"clickhouse-{database}") / "ch"
            ClickHouse(f"chdb://{template}", database).apply_ddl(REPO_ROOT / "sql" / "clickhouse")
            templates[database] = template  # the engine is closed after each session
        # symlinks kept: the engine's folder links its tables relatively (data/ -> store/)
        shutil.copytree(templates[database], folder, symlinks=True)
        return ClickHouse(f"chdb://{folder}", database)

    return make


@pytest.fixture
def mart_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, memory_path: Path
) -> Iterator[Settings]:
    """Settings with this test's own data folder and Dagster home (in memory: see the
    module), no Kafka needed."""
    monkeypatch.setenv("EP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DAGSTER_HOME", str(memory_path / "dagster"))
    yield get_settings()
