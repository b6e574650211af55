"""Faults on purpose: the broker restarting under load, sinks that fail. Nothing is lost.

Every test ends by reconciling: what the collector accepted (or what was produced) is in the
lake and in ClickHouse exactly once. No fakes: a real broker is stopped and started, a real
ClickHouse table disappears, a real folder is in the way, a real 256 KiB tmpfs fills up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import httpx
import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from eventplatform.clickhouse import engine_holder, platform_clickhouse
from eventplatform.collect.customers import CustomerStore
from eventplatform.events.examples import example_event
from eventplatform.kafka.broker import BrokerConfig, LocalBroker
from eventplatform.kafka.clients import make_admin, make_consumer
from eventplatform.kafka.topics import ensure_topics, platform_topics
from eventplatform.land.commit import OffsetCommitter
from eventplatform.land.lander import Manifest
from eventplatform.land.sources import build_lander
from eventplatform.land.spend import ensure_backfilled
from eventplatform.reconcile import reconcile_platform
from eventplatform.settings import REPO_ROOT, Settings, get_settings
from eventplatform_tests.test_collector import gauge, running_collector
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


def _print_where_landers_are(
    settings: Settings, landers: list[subprocess.Popen], logs: dict[str, Path]
) -> None:
    """Each landing process's stacks (``kill -USR1``) and log, and who holds the engine."""
    for lander in landers:
        if lander.poll() is None:
            lander.send_signal(signal.SIGUSR1)
    time.sleep(1)
    print(f"the embedded engine is held by pid {engine_holder(settings.clickhouse_dsn)}")
    for lander, (source, log_path) in zip(landers, logs.items(), strict=True):
        print(f"--- landing {source} (pid {lander.pid}, exit {lander.poll()}):")
        print(log_path.read_text(errors="replace")[-20_000:])


def test_broker_restart_under_load_loses_nothing_that_got_a_202(
    platform_env: Settings, monkeypatch, tmp_path: Path, kafka_libs: Path
) -> None:
    broker = LocalBroker(BrokerConfig.on_free_ports(kafka_libs, tmp_path / "kafka"))
    broker.start()
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", broker.config.bootstrap)
    monkeypatch.setenv("EP_LAND_RAW_SHARDS", "1")
    settings = get_settings()
    ensure_topics(make_admin(settings.kafka.bootstrap), platform_topics(settings.kafka))
    key = CustomerStore(settings.customers_db).add("acme")
    # Over its quota a customer's events go to events.overflow: land both topics.
    # (Output to files: a pipe that nobody reads blocks its writer once full.)
    lander_logs = {source: tmp_path / f"land-{source}.log" for source in ("raw", "overflow")}
    landers = []
    for source, log_path in lander_logs.items():
        with open(log_path, "wb") as log_file:
            landers.append(
                subprocess.Popen(
                    # Idle-stop outlasts the waits below (buffer drain 240 s, landing 180 s):
                    # a producer that takes minutes to recover its id after the restart must
                    # not outwait the landers. They are stopped with SIGTERM at the end.
                    [*LAND, "--source", source, "--idle-stop", "600", "--quiet"],
                    cwd=REPO_ROOT,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            )
    started = datetime.now(UTC) - timedelta(minutes=1)
    accepted: set[str] = set()
    statuses: list[int] = []
    broker_down = threading.Event()
    accepted_while_down: list[int] = []
    stop = threading.Event()

    def send(url: str) -> None:
        with httpx.Client(timeout=30) as client:
            b = 0
            while not stop.is_set():
                events = [example_event("click", event_id=f"r{b}-{i}") for i in range(100)]
                response = client.post(
                    f"{url}/v1/events", json=events, headers={"Authorization": f"Bearer {key}"}
                )
                statuses.append(response.status_code)
                if response.status_code == 202:
                    accepted.update(response.json()["event_ids"])
                    if broker_down.is_set():
                        accepted_while_down.append(b)
                else:
                    time.sleep(0.2)  # as a client told Retry-After would
                b += 1

    try:
        # No hard cap: a fast machine sends over 20,000 events/s from this one client once the
        # broker is back, and a 429 for that is the quota's business, not this test's.
        with running_collector(
            settings,
            EP_COLLECTOR_PRODUCER_MAX_MESSAGES="10000",
            EP_COLLECTOR_HARD_CAP_PER_S="1e9",
            EP_COLLECTOR_HARD_CAP_BURST="1e9",
        ) as collector:
            url = collector.url
            sender = threading.Thread(target=send, args=(url,))
            sender.start()
            time.sleep(3)
            broker_down.set()
            broker.stop()
            time.sleep(8)
            broker_down.clear()
            broker.start()
            time.sleep(4)
            stop.set()
            sender.join(timeout=60)
            # The producer catches up once the broker is back: its buffer drains by itself.
            # (Seen to take over a minute now and then, while librdkafka's idempotent producer
            # recovers its producer id; SIGTERM's flush is tested in test_collector.py.)
            drained = time.monotonic()
            while buffered(collector.admin_url) > 0:
                waited = time.monotonic() - drained
                assert waited < 240, (
                    f"{buffered(collector.admin_url)} buffered:\n{collector.output()[-5000:]}"
                )
                time.sleep(0.5)
            drain_s = time.monotonic() - drained
            print(f"the collector's buffer drained {drain_s:.1f}s after load")
        assert set(statuses) <= {202, 503}, statuses
        timeline = f"{len(statuses)} answers, {statuses.count(503)} x 503"
        assert accepted_while_down, (
            f"the collector should buffer while the broker is down: {timeline}"
        )
        assert 503 in statuses, f"a full producer buffer must answer 503: {timeline}"

        # The landing processes rode through the restart and land everything by themselves.
        deadline = time.monotonic() + 180
        while True:
            landed = clickhouse_count(settings, "SELECT count() FROM {db}.events")[0][0]
            if landed >= len(accepted):
                break
            for lander, log_path in zip(landers, lander_logs.values(), strict=True):
                if lander.poll() is not None:
                    raise AssertionError(
                        f"a landing process ended, {landed} of {len(accepted)} landed, the "
                        f"buffer drained in {drain_s:.0f} s: {log_path.read_text()}"
                    )
            assert time.monotonic() < deadline, (
                f"landing did not catch up in 180 s: {landed} of {len(accepted)} landed"
            )
            time.sleep(1)
        for lander in landers:
            lander.send_signal(signal.SIGTERM)
            lander.wait(timeout=60)
        assert_landed_once(settings, accepted)
        overflowed = committed(settings, settings.kafka.overflow_topic, 3)
        assert committed(settings) + overflowed == len(accepted)
        # The platform's own reconciliation, by Kafka offsets: accepted = landed, per customer.
        result = reconcile_platform(settings, started)
        acme = result.by_customer()["acme"]
        assert (acme.in_kafka, acme.landed, acme.pending, acme.duplicates) == (
            len(accepted),
            len(accepted),
            0,
            0,
        )
        assert acme.overflow == overflowed and result.problems() == []
    except BaseException:  # pytest-timeout's failure too: say where the landing processes were
        _print_where_landers_are(settings, landers, lander_logs)
        raise
    finally:
        for lander in landers:
            if lander.poll() is None:
                lander.kill()
        broker.stop()


def buffered(url: str) -> float:
    """Messages the collector holds for the broker."""
    return gauge(url, "collector_producer_buffer_messages")


@pytest.fixture
def produced(topics: Settings) -> tuple[Settings, set[str]]:
    topics.land.raw_shards = 1
    topics.land.idle_stop_s = 1.0
    return topics, set(produce_events(topics, 400))


def manifest_of(settings: Settings) -> Manifest:
    return Manifest(
        settings.lake_dir
        / "_landing"
        / settings.land.group_id
        / f"{settings.kafka.raw_topic}.shard-0-of-1.json"
    )


def test_failing_clickhouse_insert_fails_the_run_and_commits_nothing(produced) -> None:
    settings, ids = produced
    lander = build_lander(settings, "raw", 0)  # the tables exist now
    clickhouse = platform_clickhouse(settings)
    with clickhouse.session() as client:
        # The spend's one-time backfill (a run's warm-up) reads events: done first, so that
        # what fails is the batch's insert, not the warm-up.
        ensure_backfilled(client, clickhouse.database)
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


class _LostCoordinator:
    """A committing client whose commits all wait for a coordinator they never find.

    A fake, for a fault the real broker cannot be made to show on demand: after a broker
    restart, a librdkafka consumer was once seen never to find its coordinator again (every
    commit ``_WAIT_COORD`` after 60 s) while new clients found it at once."""

    def __init__(self) -> None:
        self.commits = 0
        self.closed = False

    def commit(self, **_: object) -> None:
        self.commits += 1
        raise KafkaException(KafkaError(KafkaError._WAIT_COORD, "Waiting for coordinator"))

    def close(self) -> None:
        self.closed = True


class _HungCommit:
    """A committing client whose synchronous commit does not return until ``answer()``.

    A fake, for the other form of the same fault (librdkafka issue 5511): after a broker
    restart, a lander's commit was seen to sit for minutes with its request queued for a
    coordinator that was never looked up again. With ``answer()`` the commit goes through
    late, on the real broker, as a recovered client's would."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.release = threading.Event()
        self.commits = 0
        self.closed = threading.Event()

    def commit(self, offsets: list[TopicPartition], **_: object) -> None:
        self.commits += 1
        self.release.wait()
        late = make_consumer(self.settings.kafka.bootstrap, self.settings.land.group_id)
        late.commit(offsets=offsets, asynchronous=False)
        late.close()

    def answer(self) -> None:
        self.release.set()

    def close(self) -> None:
        self.closed.set()


def _clients(settings: Settings, *first: object) -> tuple[list[object], Callable[[], object]]:
    """The fakes given first, then real consumers of the landing group."""
    made: list[object] = []

    def new_client() -> object:
        client = (
            first[len(made)]
            if len(made) < len(first)
            else make_consumer(settings.kafka.bootstrap, settings.land.group_id)
        )
        made.append(client)
        return client

    return made, new_client


def test_a_commit_whose_client_lost_its_coordinator_goes_through_a_new_one(
    topics: Settings,
) -> None:
    settings = topics
    offsets = [TopicPartition(settings.kafka.raw_topic, p, 10 + p) for p in range(3)]
    stuck, lines = _LostCoordinator(), []
    made, new_client = _clients(settings, stuck)
    committer = OffsetCommitter(new_client, lines.append)  # type: ignore[arg-type]
    committer.commit(offsets, 60)
    assert stuck.commits == 1 and stuck.closed
    assert committed(settings, partitions=3) == 10 + 11 + 12  # on the broker, for the group
    assert lines == [
        'commit waits: KafkaError{code=_WAIT_COORD,val=-180,str="Waiting for coordinator"}',
        "commit tries again through a new consumer of the group",
    ]
    committer.commit([TopicPartition(settings.kafka.raw_topic, 0, 20)], 60)
    assert len(made) == 2  # the new client stays for the later commits
    assert committed(settings, partitions=3) == 20 + 11 + 12
    committer.close()
    # Without a client that finds its coordinator it waits, and fails past its deadline.
    _, only_lost = _clients(settings, *[_LostCoordinator() for _ in range(10)])
    with pytest.raises(KafkaException, match="_WAIT_COORD"):
        OffsetCommitter(only_lost, lines.append).commit(offsets, 0.5)  # type: ignore[arg-type]


def test_a_commit_that_never_answers_is_given_up_on_and_goes_through_a_new_client(
    topics: Settings,
) -> None:
    settings = topics
    offsets = [TopicPartition(settings.kafka.raw_topic, p, 10 + p) for p in range(3)]
    hung, lines = _HungCommit(settings), []
    made, new_client = _clients(settings, hung)
    committer = OffsetCommitter(new_client, lines.append, attempt_timeout_s=1.0)  # type: ignore[arg-type]
    try:
        committer.commit(offsets, 60)  # without the bound this never returns
        assert hung.commits == 1 and len(made) == 2
        assert committed(settings, partitions=3) == 10 + 11 + 12
        assert lines == [
            'commit waits: KafkaError{code=_TIMED_OUT,val=-185,str="the commit did not answer '
            'in 1 s"}',
            "commit tries again through a new consumer of the group",
        ]
        later = [TopicPartition(settings.kafka.raw_topic, p, 30 + p) for p in range(3)]
        committer.commit(later, 60)
        assert len(made) == 2  # the new client stays
        assert not hung.closed.is_set()  # never closed while its commit is in flight
        # The dropped client's commit goes through late, moving the group back...
        hung.answer()
        assert hung.closed.wait(30)  # ...and its own thread then closes it
        assert committed(settings, partitions=3) == 10 + 11 + 12
        # ...so closing the committer commits the run's last offsets again.
        committer.close()
        assert committed(settings, partitions=3) == 30 + 31 + 32
        assert lines[-1] == "a dropped client's commit went through late: the last offsets again"
    finally:
        hung.answer()
    # A commit whose every client hangs fails past its deadline (the next run replays).
    stuck = [_HungCommit(settings) for _ in range(3)]
    _, only_hung = _clients(settings, *stuck)
    try:
        with pytest.raises(KafkaException, match="did not answer"):
            OffsetCommitter(only_hung, lines.append, attempt_timeout_s=0.3).commit(  # type: ignore[arg-type]
                offsets, 0.5
            )
    finally:
        for client in stuck:
            client.answer()
        for client in stuck:  # their late commits done before the session's broker stops
            if client.commits:
                client.closed.wait(30)
