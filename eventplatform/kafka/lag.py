"""Consumer lag: how far a consumer group is behind the end of a topic, per partition.

Landing (the lag per shard its sensor and ``eventplatform status`` show), the quality checks
(the lag check) and the lander itself (the lag behind each batch) all read it here, from
committed offsets and watermarks: nothing is consumed.
"""

from __future__ import annotations

from collections.abc import Mapping

from confluent_kafka import Consumer, TopicPartition

from eventplatform.kafka.clients import committed_offsets, make_consumer, watermark_offsets


def topic_partitions(consumer: Consumer, topic: str, timeout_s: float) -> list[int]:
    """The topic's partition ids, sorted; a missing topic is an error, not an empty list."""
    metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if metadata is None or metadata.error is not None:
        raise RuntimeError(f"topic {topic} not found")
    return sorted(metadata.partitions)


def consumer_lag(
    bootstrap: str, group_id: str, topic: str, timeout_s: float = 15
) -> dict[int, int]:
    """Messages not yet committed by ``group_id``, per partition of ``topic``."""
    consumer = make_consumer(bootstrap, group_id)
    try:
        partitions = topic_partitions(consumer, topic, timeout_s)
        committed = committed_offsets(
            consumer, [TopicPartition(topic, p) for p in partitions], timeout_s
        )
        lag = {}
        for tp in committed:
            low, high = watermark_offsets(consumer, TopicPartition(topic, tp.partition), timeout_s)
            position = tp.offset if tp.offset >= 0 else low
            lag[tp.partition] = max(0, high - position)
        return lag
    finally:
        consumer.close()


def cached_lag(
    consumer: Consumer, topic: str, partitions: list[int], positions: Mapping[int, int]
) -> int:
    """Messages behind ``positions`` (else the consumer's own position) on ``partitions``,
    from the watermarks the consumer's fetches brought: no extra round trip, so a running
    consumer can ask after every batch."""
    lag = 0
    for p in partitions:
        tp = TopicPartition(topic, p)
        _, high = consumer.get_watermark_offsets(tp, cached=True)
        position = positions.get(p)
        if position is None:
            position = consumer.position([tp])[0].offset
        if high >= 0 and position >= 0:
            lag += max(0, high - position)
    return lag
