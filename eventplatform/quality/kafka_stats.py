"""What Kafka itself can tell about health: messages per window and dead letters.

(Consumer lag is ``eventplatform.kafka.lag``: landing reads it too.)
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition

from eventplatform.kafka.clients import make_consumer, watermark_offsets
from eventplatform.kafka.dlq import parse_dead_letter
from eventplatform.kafka.lag import topic_partitions


def _start_offsets(consumer: Consumer, topic: str, since_ms: int, timeout_s: float):
    """(partition, first offset at or after since_ms, high watermark) for each partition."""
    partitions = topic_partitions(consumer, topic, timeout_s)
    found = consumer.offsets_for_times(
        [TopicPartition(topic, p, since_ms) for p in partitions], timeout=timeout_s
    )
    out = []
    for tp in found:
        _, high = watermark_offsets(consumer, TopicPartition(topic, tp.partition), timeout_s)
        start = tp.offset if tp.offset >= 0 else high  # -1: nothing at or after since_ms
        out.append((tp.partition, start, high))
    return out


def messages_since(bootstrap: str, topic: str, since_ms: int, timeout_s: float = 15) -> int:
    """How many messages the topic received since ``since_ms`` (from offsets, not reading)."""
    consumer = make_consumer(bootstrap, f"quality-{uuid.uuid4().hex}")
    try:
        return sum(
            high - start for _, start, high in _start_offsets(consumer, topic, since_ms, timeout_s)
        )
    finally:
        consumer.close()


@dataclass
class DeadLetterSample:
    total: int  # dead letters in the window (from offsets)
    read: int  # how many were read for the breakdown (bounded)
    by_reason: Counter
    by_customer: Counter
    details: Counter  # (reason, detail) -> count, for schema drift


def dead_letters_since(
    bootstrap: str, topic: str, since_ms: int, max_read: int = 5000, timeout_s: float = 15
) -> DeadLetterSample:
    """Dead letters since ``since_ms``: the count, and a breakdown of up to ``max_read``."""
    consumer = make_consumer(bootstrap, f"quality-{uuid.uuid4().hex}")
    try:
        ranges = _start_offsets(consumer, topic, since_ms, timeout_s)
        total = sum(high - start for _, start, high in ranges)
        sample = DeadLetterSample(total, 0, Counter(), Counter(), Counter())
        to_read = [(p, s, h) for p, s, h in ranges if h > s]
        if not to_read:
            return sample
        consumer.assign([TopicPartition(topic, p, s) for p, s, _ in to_read])
        ends = {p: h for p, _, h in to_read}
        done: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(done) < len(ends) and sample.read < max_read and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            letter = parse_dead_letter(message)
            sample.read += 1
            sample.by_reason[letter.reason] += 1
            sample.by_customer[letter.customer_id or "(unknown)"] += 1
            sample.details[(letter.reason, letter.detail[:200])] += 1
            if message.offset() + 1 >= ends[message.partition()]:
                done.add(message.partition())
        return sample
    finally:
        consumer.close()
