"""`eventplatform status`: one screen an operator reads first.

Broker, topics and landing lag per shard (from Kafka), landing runs in flight (from the
Dagster instance), the newest landed event per customer (from ClickHouse), and the checks that
are failing now (the alert router's state: a check is in it from its first failure until it
recovers). Each part says so when its source cannot be reached, instead of failing the screen.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

from confluent_kafka import TopicPartition

from eventplatform.clickhouse import platform_clickhouse
from eventplatform.kafka.broker import broker_answers
from eventplatform.kafka.clients import make_consumer, watermark_offsets
from eventplatform.land.sources import lag_per_shard, sources
from eventplatform.settings import Settings


def _section(title: str, build: Callable[[], list[str]]) -> list[str]:
    try:
        body = build()
    except Exception as exc:  # one unreachable source must not hide the others
        body = [f"  unavailable: {type(exc).__name__}: {exc}"]
    return [title, *body, ""]


def broker_lines(settings: Settings) -> list[str]:
    bootstrap = settings.kafka.bootstrap
    answering = broker_answers(bootstrap, timeout_s=3.0)
    return [f"  {bootstrap}: {'answering' if answering else 'NOT ANSWERING'}"]


def topic_lines(settings: Settings) -> list[str]:
    consumer = make_consumer(settings.kafka.bootstrap, "eventplatform-status")
    lines = []
    try:
        k = settings.kafka
        for topic in (k.raw_topic, k.overflow_topic, k.dlq_topic, k.control_topic):
            metadata = consumer.list_topics(topic, timeout=5).topics.get(topic)
            if metadata is None or metadata.error is not None:
                lines.append(f"  {topic}: missing (eventplatform topics ensure)")
                continue
            held = 0
            for p in metadata.partitions:
                low, high = watermark_offsets(consumer, TopicPartition(topic, p), 5)
                held += high - low
            lines.append(f"  {topic}: {len(metadata.partitions)} partitions, {held:,} messages")
    finally:
        consumer.close()
    return lines


def lag_lines(settings: Settings) -> list[str]:
    lines = []
    for source in sources(settings).values():
        by_shard = lag_per_shard(settings, source)
        shards = ", ".join(f"shard {s}: {n:,}" for s, n in by_shard.items())
        lines.append(f"  {source.topic}: {shards}")
    return lines


def run_lines(settings: Settings) -> list[str]:
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    if not (settings.dagster_home / "dagster.yaml").exists():
        return [f"  no Dagster instance at {settings.dagster_home} (eventplatform run makes it)"]
    in_flight = [DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        runs = instance.get_runs(filters=RunsFilter(statuses=in_flight), limit=50)
        failed = instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.FAILURE]), limit=5)
    lines = [
        f"  {run.status.value.lower():<8} {run.job_name} {run.tags.get('eventplatform/shard', '')}"
        f" ({run.run_id[:8]})"
        for run in runs
    ] or ["  none"]
    lines += [f"  recent failure: {run.job_name} ({run.run_id[:8]})" for run in failed]
    return lines


def landed_lines(settings: Settings, now: datetime) -> list[str]:
    clickhouse = platform_clickhouse(settings)
    with clickhouse.session() as client:
        rows = client.query(
            f"SELECT customer_id, max(landed_ts), count() FROM {clickhouse.database}.events "
            "GROUP BY customer_id ORDER BY customer_id"
        ).result_rows
    if not rows:
        return ["  nothing landed yet"]
    lines = []
    for customer, landed, count in rows:
        landed = landed if landed.tzinfo else landed.replace(tzinfo=UTC)
        age = max(0.0, (now - landed).total_seconds())  # landed while this screen was built
        lines.append(
            f"  {customer:<20} {landed:%Y-%m-%d %H:%M:%S}Z ({age:,.0f}s ago), {count:,} events"
        )
    return lines


def check_lines(settings: Settings) -> list[str]:
    state_file = settings.data_dir / "alerts_state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if not state:
        return ["  none failing"]
    return [f"  FAILING {key} (alerted {entry['sent']})" for key, entry in sorted(state.items())]


def status_screen(settings: Settings, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    lines = [f"eventplatform status at {now:%Y-%m-%d %H:%M:%S}Z", ""]
    lines += _section("broker", lambda: broker_lines(settings))
    lines += _section("topics", lambda: topic_lines(settings))
    lines += _section("landing lag (messages not yet landed)", lambda: lag_lines(settings))
    lines += _section("runs in flight", lambda: run_lines(settings))
    lines += _section("last landed per customer", lambda: landed_lines(settings, now))
    lines += _section("checks", lambda: check_lines(settings))
    return "\n".join(lines).rstrip() + "\n"
