"""The ingest group's topics asset. What the landing runs write (events_lake,
events_clickhouse, dead_letters) is declared with the landing component, landed/*/defs.yaml.

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
