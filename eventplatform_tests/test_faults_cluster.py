"""A three-broker KRaft cluster loses a broker under load: nothing acknowledged is lost."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from confluent_kafka import Producer

from eventplatform.kafka.clients import make_admin, make_consumer, producer_config
from eventplatform.kafka.cluster import LocalCluster
from eventplatform.kafka.topics import TopicSpec, ensure_topics


def test_broker_loss_and_return_under_load(tmp_path: Path, kafka_libs: Path) -> None:
    cluster = LocalCluster(kafka_libs, tmp_path / "cluster", nodes=3)
    cluster.start()
    try:
        topic = "events.raw"
        reports = ensure_topics(
            make_admin(cluster.bootstrap), [TopicSpec(topic, 6, 3, {"min.insync.replicas": "2"})]
        )
        assert reports[0].status == "created"

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
                    producer.produce(
                        topic, key=b"c%d" % (i % 7), value=b"%08d" % i, on_delivery=on_delivery
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
        time.sleep(5)
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
    finally:
        cluster.stop()
