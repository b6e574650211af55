"""`kafka_topics` observed: partitions, end offsets and the landing group's lag per topic.

The asset is materialized when the topics are created or checked; between those, this
sensor records an observation every minute, so the UI shows the topics as they are (not
"Never materialized" while events flow). It reads watermarks and committed offsets only:
nothing is consumed.
"""

from confluent_kafka import TopicPartition
from dagster import (
    AssetObservation,
    DefaultSensorStatus,
    MetadataValue,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from eventplatform.defs.resources import KafkaResource
from eventplatform.kafka.clients import make_consumer, watermark_offsets
from eventplatform.kafka.lag import consumer_lag, topic_partitions

OBSERVE_INTERVAL_S = 60
TIMEOUT_S = 10.0


def observe_topics(kafka: KafkaResource) -> AssetObservation:
    """One observation of `kafka_topics`: per topic (by role), its partitions, the sum of
    its end offsets and, for the landed topics, the landing group's lag."""
    landed = {"raw": kafka.raw_topic, "overflow": kafka.overflow_topic, "dlq": kafka.dlq_topic}
    topics = {**landed, "control": kafka.control_topic}
    metadata: dict = {"bootstrap": kafka.bootstrap}
    rows = ["| topic | partitions | end offsets | lag (" + kafka.landing_group + ") |"]
    rows.append("|---|---|---|---|")
    consumer = make_consumer(kafka.bootstrap, kafka.landing_group)
    try:
        for role, topic in topics.items():
            try:
                partitions = topic_partitions(consumer, topic, TIMEOUT_S)
            except RuntimeError:  # not created yet: say so, observe the others
                metadata[f"{role}_partitions"] = 0
                rows.append(f"| {topic} | missing | | |")
                continue
            ends = sum(
                watermark_offsets(consumer, TopicPartition(topic, p), TIMEOUT_S)[1]
                for p in partitions
            )
            metadata[f"{role}_partitions"] = len(partitions)
            metadata[f"{role}_end_offsets"] = ends
            lag = ""
            if role in landed:
                lag = sum(consumer_lag(kafka.bootstrap, kafka.landing_group, topic).values())
                metadata[f"{role}_lag"] = lag
            rows.append(f"| {topic} | {len(partitions)} | {ends} | {lag} |")
    finally:
        consumer.close()
    metadata["topics"] = MetadataValue.md("\n".join(rows))
    return AssetObservation(asset_key="kafka_topics", metadata=metadata)


@sensor(
    name="observe_kafka_topics",
    minimum_interval_seconds=OBSERVE_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description="Records an observation of kafka_topics every minute: partitions, end "
    "offsets and the landing group's lag per topic.",
)
def observe_kafka_topics(context: SensorEvaluationContext, kafka: KafkaResource) -> SensorResult:
    observation = observe_topics(kafka)
    context.log.info(f"observed kafka_topics: {observation.metadata['topics'].value}")
    return SensorResult(asset_events=[observation])
