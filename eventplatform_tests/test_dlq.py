"""Dead letters round-trip through the broker with their reason and origin."""

from __future__ import annotations

import time

from eventplatform.kafka.clients import make_admin, make_consumer, make_producer
from eventplatform.kafka.dlq import DeadLetter, parse_dead_letter, send_dead_letter
from eventplatform.kafka.topics import TopicSpec, ensure_topics


def test_dead_letter_keeps_bytes_reason_and_origin(bootstrap: str, unique: str) -> None:
    topic = f"dlq.{unique}"
    ensure_topics(make_admin(bootstrap), [TopicSpec(topic, 1, 1, {})])
    letter = DeadLetter(
        reason="bad_marker",
        detail="expected c301, got 'he'",
        stage="land",
        value=b"hello \xff bytes",
        customer_id="cust-a",
        source_topic="events.raw",
        source_partition=7,
        source_offset=12345,
        dead_ts=1795428000000,
    )
    producer = make_producer(bootstrap)
    send_dead_letter(producer, topic, letter)
    assert producer.flush(30) == 0

    consumer = make_consumer(bootstrap, f"g-{unique}")
    consumer.subscribe([topic])
    deadline, message = time.monotonic() + 30, None
    while message is None and time.monotonic() < deadline:
        candidate = consumer.poll(0.5)
        if candidate is not None and not candidate.error():
            message = candidate
    consumer.close()
    assert message is not None
    assert message.key() == b"cust-a"
    assert parse_dead_letter(message) == letter
