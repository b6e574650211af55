"""The ingest group's assets: the topics, and what the landing runs write.

(No `from __future__ import annotations` in defs/: Dagster reads the annotations at runtime.)
"""

import dagster as dg

from eventplatform.defs.resources import KafkaResource
from eventplatform.kafka.topics import ensure_topics, platform_topics
from eventplatform.settings import Settings


@dg.asset(
    group_name="ingest",
    kinds={"kafka"},
    owners=["team:data-platform"],
    description="The platform's Kafka topics (events.raw, events.overflow, events.dlq, "
    "campaign.control), created or checked against their specification.",
)
def kafka_topics(
    context: dg.AssetExecutionContext, kafka: KafkaResource, settings: dg.ResourceParam[Settings]
) -> dg.MaterializeResult:
    reports = ensure_topics(kafka.admin(), platform_topics(settings.kafka))
    drifted = [r for r in reports if r.status == "differs"]
    for report in reports:
        context.log.info(str(report))
    if drifted:
        raise RuntimeError(
            "topics differ from their specification:\n" + "\n".join(str(r) for r in drifted)
        )
    return dg.MaterializeResult(
        metadata={
            "bootstrap": kafka.bootstrap,
            "topics": dg.MetadataValue.md("\n".join(f"- `{r.name}`: {r.status}" for r in reports)),
        }
    )


events_lake = dg.AssetSpec(
    "events_lake",
    group_name="ingest",
    kinds={"kafka", "parquet"},
    owners=["team:data-platform"],
    deps=["kafka_topics"],
    description="Landed events as Parquet (zstd), hive-partitioned by event_date and "
    "event_hour; file names carry topic, partition and offset range. Updated by every "
    "landing micro-batch.",
)
events_clickhouse = dg.AssetSpec(
    "events_clickhouse",
    group_name="ingest",
    kinds={"kafka", "clickhouse"},
    owners=["team:data-platform"],
    deps=["kafka_topics"],
    description="Landed events in ClickHouse (table `events`), the same rows as the lake, "
    "inserted once per micro-batch with a deduplication token.",
)
dead_letters = dg.AssetSpec(
    "dead_letters",
    group_name="ingest",
    kinds={"kafka", "parquet", "clickhouse"},
    owners=["team:data-platform"],
    deps=["kafka_topics"],
    description="Everything that could not be used (events.dlq), with its reason and bytes: "
    "lake folder dead_letters/ and ClickHouse table `dead_letters`.",
)
