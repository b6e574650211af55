"""Topics as code: the platform's topics, created or checked against their specification.

An existing topic whose partitions, replication or configuration differ from the
specification is reported, never silently accepted: a drifted topic (say, a DLQ with a
retention of one hour) loses data quietly. ``ensure_topics(..., alter=True)`` brings
configuration back to the specification; partitions and replication are only reported,
because changing them moves keys between partitions or needs a reassignment plan.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from eventplatform.settings import KafkaSettings


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str]
    purpose: str = ""


@dataclass
class TopicReport:
    name: str
    status: str  # created | ok | differs | altered
    differences: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        if not self.differences:
            return f"{self.name}: {self.status}"
        return f"{self.name}: {self.status}\n" + "\n".join(f"  - {d}" for d in self.differences)


def platform_topics(kafka: KafkaSettings) -> list[TopicSpec]:
    """The topics the platform needs, from settings."""
    common = {
        "min.insync.replicas": str(kafka.min_insync_replicas),
        "cleanup.policy": "delete",
        "retention.ms": str(kafka.retention_ms),
    }
    rf = kafka.replication_factor
    return [
        TopicSpec(
            kafka.raw_topic,
            kafka.raw_partitions,
            rf,
            dict(common),
            "accepted events, Avro, key = customer id",
        ),
        TopicSpec(
            kafka.overflow_topic,
            kafka.overflow_partitions,
            rf,
            dict(common),
            "events of customers over their quota, landed at lower priority",
        ),
        TopicSpec(
            kafka.dlq_topic,
            kafka.dlq_partitions,
            rf,
            {**common, "retention.ms": str(kafka.dlq_retention_ms)},
            "anything that could not be used, with its reason",
        ),
        TopicSpec(
            kafka.control_topic,
            kafka.control_partitions,
            rf,
            {
                "min.insync.replicas": str(kafka.min_insync_replicas),
                "cleanup.policy": "compact",
                "min.compaction.lag.ms": "0",
            },
            "campaign pause/resume signals, compacted, key = campaign id",
        ),
    ]


def ensure_topics(
    admin: AdminClient, specs: list[TopicSpec], alter: bool = False, timeout_s: float = 30.0
) -> list[TopicReport]:
    """Create missing topics, check existing ones. Reports say what was done or differs."""
    metadata = admin.list_topics(timeout=timeout_s)
    reports: dict[str, TopicReport] = {}
    missing = [s for s in specs if s.name not in metadata.topics]
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(s.name, s.partitions, s.replication_factor, config=s.config)
                for s in missing
            ],
            operation_timeout=timeout_s,
        )
        for name, future in futures.items():
            try:
                future.result()
                reports[name] = TopicReport(name, "created")
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):  # created concurrently: check it
                    raise
    existing = [s for s in specs if s.name not in reports]
    checked = _check(admin, existing, timeout_s)
    drifted = [s for s in existing if checked[s.name].status == "differs"]
    if alter and drifted:
        _alter_configs(admin, drifted)
        # KRaft applies the change asynchronously: re-check until it shows (or time runs out).
        deadline = time.monotonic() + timeout_s
        while True:
            rechecked = _check(admin, drifted, timeout_s)
            configs_match = all(not _config_differences(rechecked[s.name]) for s in drifted)
            if configs_match or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for spec in drifted:
            report = rechecked[spec.name]
            checked[spec.name] = report if report.differences else TopicReport(spec.name, "altered")
    reports.update(checked)
    return [reports[s.name] for s in specs]


def _check(admin: AdminClient, specs: list[TopicSpec], timeout_s: float) -> dict[str, TopicReport]:
    if not specs:
        return {}
    metadata = admin.list_topics(timeout=timeout_s)
    configs = _describe_configs(admin, [s.name for s in specs], timeout_s)
    return {s.name: _compare(s, metadata.topics[s.name], configs[s.name]) for s in specs}


def _describe_configs(admin: AdminClient, names: list[str], timeout_s: float) -> dict[str, dict]:
    """Topic configurations; a topic created a moment ago may not be known to every broker."""
    deadline = time.monotonic() + timeout_s
    while True:
        described = admin.describe_configs([ConfigResource(ResourceType.TOPIC, n) for n in names])
        try:
            return {resource.name: future.result() for resource, future in described.items()}
        except KafkaException as exc:
            if (
                exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART
                or time.monotonic() > deadline
            ):
                raise
            time.sleep(0.2)


def _compare(spec: TopicSpec, topic_meta, configs: dict) -> TopicReport:
    differences = []
    partitions = len(topic_meta.partitions)
    if partitions != spec.partitions:
        differences.append(f"partitions: {partitions}, specified {spec.partitions}")
    replication = len(next(iter(topic_meta.partitions.values())).replicas)
    if replication != spec.replication_factor:
        differences.append(
            f"replication factor: {replication}, specified {spec.replication_factor}"
        )
    for key, wanted in spec.config.items():
        actual = configs[key].value if key in configs else None
        if actual != wanted:
            differences.append(f"{key}: {actual}, specified {wanted}")
    return TopicReport(spec.name, "differs" if differences else "ok", differences)


def _config_differences(report: TopicReport) -> list[str]:
    return [d for d in report.differences if not d.startswith(("partitions:", "replication"))]


def _alter_configs(admin: AdminClient, specs: list[TopicSpec]) -> None:
    """Set each spec's configuration (partitions and replication are left as they are)."""
    resources = [
        ConfigResource(
            ResourceType.TOPIC,
            spec.name,
            incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
                for k, v in spec.config.items()
            ],
        )
        for spec in specs
    ]
    for future in admin.incremental_alter_configs(resources).values():
        future.result()
