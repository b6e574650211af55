"""The topics the platform lands, and a lander for one shard of each, built from settings."""

from __future__ import annotations

from dataclasses import dataclass

from eventplatform.clickhouse import platform_clickhouse
from eventplatform.kafka.lag import consumer_lag
from eventplatform.land.batches import rows_for
from eventplatform.land.lander import ShardLander
from eventplatform.settings import Settings


@dataclass(frozen=True)
class Source:
    name: str  # raw | overflow | dlq
    topic: str
    shards: int
    kind: str  # events | dead_letters
    priority: int  # Dagster run priority: the overflow waits for the others


def sources(settings: Settings) -> dict[str, Source]:
    k, land = settings.kafka, settings.land
    return {
        "raw": Source("raw", k.raw_topic, land.raw_shards, "events", 0),
        "overflow": Source("overflow", k.overflow_topic, land.overflow_shards, "events", -10),
        "dlq": Source("dlq", k.dlq_topic, land.dlq_shards, "dead_letters", -5),
    }


def lag_per_shard(settings: Settings, source: Source) -> dict[int, int]:
    """Messages the landing group has not committed yet, per shard of ``source``."""
    lag = consumer_lag(settings.kafka.bootstrap, settings.land.group_id, source.topic)
    by_shard = {shard: 0 for shard in range(source.shards)}
    for partition, n in lag.items():
        by_shard[partition % source.shards] += n
    return by_shard


def build_lander(settings: Settings, source_name: str, shard: int) -> ShardLander:
    try:
        source = sources(settings)[source_name]
    except KeyError:
        raise ValueError(f"source must be one of raw, overflow, dlq; got {source_name!r}") from None
    return ShardLander(
        bootstrap=settings.kafka.bootstrap,
        topic=source.topic,
        shard=shard,
        shards=source.shards,
        rows=rows_for(source.kind, settings.event_policy),
        lake_dir=settings.lake_dir,
        clickhouse=platform_clickhouse(settings),
        dlq_topic=settings.kafka.dlq_topic,
        settings=settings.land,
        dlq_max_value_bytes=settings.collector.dlq_max_value_bytes,
    )
