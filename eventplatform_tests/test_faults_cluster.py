"""A three-broker KRaft cluster loses a broker under load: nothing acknowledged is lost, and
what landed from it (lake and ClickHouse) holds every acknowledged event exactly once."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
from confluent_kafka import Producer

from eventplatform.clickhouse import ClickHouse
from eventplatform.events import EventCodec
from eventplatform.kafka.clients import make_admin, make_consumer, producer_config
from eventplatform.kafka.cluster import LocalCluster
from eventplatform.kafka.topics import TopicSpec, ensure_topics
from eventplatform.land.batches import EventRows
from eventplatform.land.lander import ShardLander
from eventplatform.settings import REPO_ROOT, LandSettings
from eventplatform_tests.helpers import decoded_event


def test_broker_loss_and_return_under_load(tmp_path: Path, kafka_libs: Path) -> None:
    cluster = LocalCluster(kafka_libs, tmp_path / "cluster", nodes=3)
    cluster.start()
    try:
        topic = "events.raw"
        replicated = {"min.insync.replicas": "2"}
        reports = ensure_topics(
            make_admin(cluster.bootstrap),
            [TopicSpec(topic, 6, 3, replicated), TopicSpec("events.dlq", 1, 3, replicated)],
        )
        assert reports[0].status == "created"
        codec = EventCodec()
        template = decoded_event("page_view", "c", datetime.now(UTC))

        acknowledged: list[bytes] = []
        failed: list[str] = []
        stop = threading.Event()

        def on_delivery(err, msg) -> None:
            if err is None:
                acknowledged.append(msg.value())
            else:
                failed.append(str(err))

        def produce() -> None:
            producer = Producer(producer_config(cluster.bootstrap, **{"linger.ms": 2}))
            i = 0
            while not stop.is_set():
                try:
                    event = {**template, "event_id": f"{i:08d}", "customer_id": f"c{i % 7}"}
                    producer.produce(
                        topic,
                        key=b"c%d" % (i % 7),
                        value=codec.encode(event),
                        on_delivery=on_delivery,
                    )
                    i += 1
                except BufferError:
                    producer.poll(0.05)
                producer.poll(0)
                if i % 200 == 0:
                    time.sleep(0.01)  # a steady load, not a flood
            assert producer.flush(120) == 0

        worker = threading.Thread(target=produce)
        worker.start()
        time.sleep(3)
        before_kill = len(acknowledged)
        cluster.kill(1)  # SIGKILL: a crash, not a clean shutdown
        # Writes pause until the controller fences the dead broker (its session times out,
        # about 9 s) and the ISRs shrink to the two live ones; then acks=all goes on.
        killed = time.monotonic()
        while len(acknowledged) - before_kill < 1000 and time.monotonic() - killed < 60:
            time.sleep(0.5)
        time.sleep(2)
        during_outage = len(acknowledged) - before_kill
        cluster.restart(1)
        time.sleep(3)
        stop.set()
        worker.join(timeout=180)
        assert not worker.is_alive()
        assert failed == []
        assert before_kill > 0 and during_outage > 0  # the cluster kept taking writes

        consumer = make_consumer(cluster.bootstrap, "verify")
        consumer.subscribe([topic])
        seen: list[bytes] = []
        deadline = time.monotonic() + 120
        while len(seen) < len(acknowledged) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                seen.append(message.value())
        # Read a little longer: a duplicate would show up as an extra message.
        end = time.monotonic() + 3
        while time.monotonic() < end:
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                seen.append(message.value())
        consumer.close()
        assert len(seen) == len(set(seen)), "a message was written twice"
        assert set(acknowledged) <= set(seen), "an acknowledged message was lost"
        assert len(seen) == len(acknowledged)
        assert cluster.answering() == [True, True, True]

        # Landed from the cluster: every acknowledged event once in the lake and ClickHouse.
        clickhouse = ClickHouse(f"chdb://{tmp_path}/ch", "ep_cluster")
        clickhouse.apply_ddl(REPO_ROOT / "sql" / "clickhouse")
        summary = ShardLander(
            bootstrap=cluster.bootstrap,
            topic=topic,
            shard=0,
            shards=1,
            rows=EventRows(),
            lake_dir=tmp_path / "lake",
            clickhouse=clickhouse,
            dlq_topic="events.dlq",
            settings=LandSettings(group_id="land-cluster", idle_stop_s=2.0),
        ).run()
        ids = {codec.decode(value)["event_id"] for value in acknowledged}
        assert summary.rows == len(ids) and summary.dead_letters == 0
        with clickhouse.session() as client:
            landed = client.query("SELECT count(), uniqExact(event_id) FROM ep_cluster.events")
        assert landed.result_rows == [(len(ids), len(ids))]
        lake = duckdb.sql(
            f"SELECT count(), count(DISTINCT event_id) "
            f"FROM read_parquet('{tmp_path}/lake/events/**/*.parquet')"
        ).fetchall()
        assert lake == [(len(ids), len(ids))]
    finally:
        cluster.stop()
