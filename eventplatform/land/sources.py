"""The topics the platform lands, and a lander for one shard of each, built from settings.

A source is a topic, its shards, the rows it lands (``events`` or ``dead_letters``: which lake
folder and ClickHouse table) and, optionally, its own batch policy. The platform's three
(raw, overflow, dlq) come from settings; any other is described by its caller (the Dagster
landing component declares them in YAML) and landed by the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

from eventplatform.clickhouse import ClickHouse, platform_clickhouse
from eventplatform.enrich import enricher_from_settings
from eventplatform.kafka.lag import consumer_lag
from eventplatform.land.batches import rows_for
from eventplatform.land.lander import ShardLander
from eventplatform.settings import Settings

SETTING_PREFIX = "setting:"  # Kafka topic names cannot hold ':', so the prefix is unambiguous


@dataclass(frozen=True)
class BatchPolicy:
    """When a micro-batch closes; None keeps the setting (EP_LAND_BATCH_MAX_*)."""

    max_records: int | None = None
    max_bytes: int | None = None
    max_wait_s: float | None = None


@dataclass(frozen=True)
class Source:
    name: str  # raw | overflow | dlq, or a declared source's name
    topic: str
    shards: int
    kind: str  # events | dead_letters
    priority: int  # Dagster run priority: the overflow waits for the others
    batch: BatchPolicy = BatchPolicy()


def sources(settings: Settings) -> dict[str, Source]:
    k, land = settings.kafka, settings.land
    return {
        "raw": Source("raw", k.raw_topic, land.raw_shards, "events", 0),
        "overflow": Source("overflow", k.overflow_topic, land.overflow_shards, "events", -10),
        "dlq": Source("dlq", k.dlq_topic, land.dlq_shards, "dead_letters", -5),
    }


def setting_value(settings: Settings, value: str | int) -> str | int:
    """``"setting:kafka.raw_topic"`` is that setting's value; anything else is itself.

    This lets a declaration follow the settings (EP_* variables) rather than copy them.
    """
    if not isinstance(value, str) or not value.startswith(SETTING_PREFIX):
        return value
    node: object = settings
    for part in value.removeprefix(SETTING_PREFIX).split("."):
        if not hasattr(node, part):
            raise ValueError(f"{value!r}: the settings have no {part!r}")
        node = getattr(node, part)
    if not isinstance(node, str | int):
        raise ValueError(f"{value!r} is not a topic name or a number: {node!r}")
    return node


def lag_per_shard(settings: Settings, source: Source) -> dict[int, int]:
    """Messages the landing group has not committed yet, per shard of ``source``."""
    lag = consumer_lag(settings.kafka.bootstrap, settings.land.group_id, source.topic)
    by_shard = {shard: 0 for shard in range(source.shards)}
    for partition, n in lag.items():
        by_shard[partition % source.shards] += n
    return by_shard


def build_lander(
    settings: Settings, source: str | Source, shard: int, clickhouse: ClickHouse | None = None
) -> ShardLander:
    """A lander for one shard: of a platform source by name, or of a described source.
    ``clickhouse``: the handle to land through (a Dagster run passes its resource's); by
    default the platform's, from the settings."""
    if isinstance(source, str):
        try:
            source = sources(settings)[source]
        except KeyError:
            raise ValueError(f"source must be one of raw, overflow, dlq; got {source!r}") from None
    policy = {
        f"batch_{field}": value for field, value in vars(source.batch).items() if value is not None
    }
    return ShardLander(
        bootstrap=settings.kafka.bootstrap,
        topic=source.topic,
        shard=shard,
        shards=source.shards,
        rows=rows_for(source.kind, settings.event_policy, enricher_from_settings(settings)),
        lake_dir=settings.lake_dir,
        clickhouse=clickhouse or platform_clickhouse(settings),
        dlq_topic=settings.kafka.dlq_topic,
        settings=settings.land.model_copy(update=policy) if policy else settings.land,
        dlq_max_value_bytes=settings.collector.dlq_max_value_bytes,
    )
