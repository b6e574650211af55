"""Ingest group: the Kafka topics the platform reads and writes.

(No `from __future__ import annotations` in defs/: Dagster reads the annotations at runtime.)
"""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from eventplatform.defs.resources import PlatformResource
from eventplatform.kafka.clients import make_admin
from eventplatform.kafka.topics import ensure_topics, platform_topics


@asset(
    group_name="ingest",
    kinds={"kafka"},
    owners=["team:data-platform"],
    description="The platform's Kafka topics (events.raw, events.overflow, events.dlq, "
    "campaign.control), created or checked against their specification.",
)
def kafka_topics(context: AssetExecutionContext, platform: PlatformResource) -> MaterializeResult:
    settings = platform.settings()
    reports = ensure_topics(make_admin(settings.kafka.bootstrap), platform_topics(settings.kafka))
    drifted = [r for r in reports if r.status == "differs"]
    for report in reports:
        context.log.info(str(report))
    if drifted:
        raise RuntimeError(
            "topics differ from their specification:\n" + "\n".join(str(r) for r in drifted)
        )
    return MaterializeResult(
        metadata={
            "bootstrap": settings.kafka.bootstrap,
            "topics": MetadataValue.md("\n".join(f"- `{r.name}`: {r.status}" for r in reports)),
        }
    )
