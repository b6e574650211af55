"""Reconciliation: every message that reached Kafka is landed, dead-lettered, or pending.

Counted by Kafka offsets, so the figures are exact: for each partition of events.raw and
events.overflow, the messages since a time (their customer from the key, their hour from the
message timestamp) are matched against the landed rows (which carry topic, partition and
offset), the landing job's dead letters (which carry the source offset), and the offsets the
landing group has not committed yet, all as of one snapshot (see :func:`reconcile`). What
the collector rejected at intake (dead letters of stage ``collect``) is reported beside it.
Anything left over is a loss, anything landed twice a duplicate: both are named.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from confluent_kafka import TopicPartition

from eventplatform.clickhouse import ClickHouse, platform_clickhouse
from eventplatform.kafka.clients import committed_offsets, make_consumer, watermark_offsets
from eventplatform.kafka.dlq import parse_dead_letter

if TYPE_CHECKING:
    from eventplatform.settings import Settings

Hour = datetime
Key = tuple[str, Hour]  # (customer, hour)


@dataclass
class Row:
    in_kafka: int = 0  # messages on raw + overflow (accepted by the collector or a producer)
    overflow: int = 0  # of which on the overflow topic
    landed: int = 0  # distinct offsets landed
    dead_landing: int = 0  # undecodable, sent to the DLQ by the landing job
    pending: int = 0  # beyond the landing group's committed offsets
    duplicates: int = 0  # landed rows beyond one per offset
    rejected_at_intake: int = 0  # dead letters of stage collect (never reached events.raw)

    @property
    def unaccounted(self) -> int:
        return self.in_kafka - self.landed - self.dead_landing - self.pending


@dataclass
class Reconciliation:
    rows: dict[Key, Row] = field(default_factory=lambda: defaultdict(Row))

    def totals(self) -> Row:
        total = Row()
        for row in self.rows.values():
            for name in Row.__dataclass_fields__:
                setattr(total, name, getattr(total, name) + getattr(row, name))
        return total

    def by_customer(self) -> dict[str, Row]:
        out: dict[str, Row] = defaultdict(Row)
        for (customer, _), row in self.rows.items():
            for name in Row.__dataclass_fields__:
                setattr(out[customer], name, getattr(out[customer], name) + getattr(row, name))
        return dict(out)

    def problems(self) -> list[str]:
        found = []
        for (customer, hour), row in sorted(self.rows.items()):
            if row.unaccounted:
                found.append(
                    f"{customer} {hour:%Y-%m-%d %H}h: {row.unaccounted} messages "
                    "neither landed, dead-lettered nor pending"
                )
            if row.duplicates:
                found.append(f"{customer} {hour:%Y-%m-%d %H}h: {row.duplicates} landed twice")
        return found


def _hour(ms: int) -> Hour:
    return datetime.fromtimestamp(ms // 3_600_000 * 3600, UTC)


def _read_since(bootstrap: str, topic: str, since_ms: int, timeout_s: float):
    """Yield (partition, offset, key, timestamp_ms, message) from since_ms to the current end."""
    consumer = make_consumer(bootstrap, f"reconcile-{uuid.uuid4().hex}")
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        starts = consumer.offsets_for_times(
            [TopicPartition(topic, p, since_ms) for p in metadata.partitions], timeout=timeout_s
        )
        ends, assign = {}, []
        for tp in starts:
            _, high = watermark_offsets(consumer, TopicPartition(topic, tp.partition), timeout_s)
            start = tp.offset if tp.offset >= 0 else high
            if high > start:
                ends[tp.partition] = high
                assign.append(TopicPartition(topic, tp.partition, start))
        if not assign:
            return
        consumer.assign(assign)
        done: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(done) < len(ends):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} did not reach its end in {timeout_s}s")
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            partition, offset = message.partition(), message.offset()
            if offset < ends[partition]:
                key = message.key().decode(errors="replace") if message.key() else "(no key)"
                yield partition, offset, key, message.timestamp()[1], message
            if offset + 1 >= ends[partition]:
                done.add(partition)
    finally:
        consumer.close()


def reconcile(
    bootstrap: str,
    clickhouse: ClickHouse,
    topics: list[str],
    dlq_topic: str,
    landing_group: str,
    since: datetime,
    overflow_topic: str | None = None,
    timeout_s: float = 120.0,
) -> Reconciliation:
    """One consistent snapshot, exact while landing runs: the landing group's committed
    offsets are read first. The landing job commits only after both sinks and the dead
    letters, so below a committed offset everything must be landed or dead-lettered by the
    time the later reads look (else it is missing); at or beyond it a message is pending,
    whatever part of its batch the sinks hold already (a batch being landed is neither
    counted landed nor as a duplicate). Read the other way round, a batch committed between
    the reads was counted neither landed nor pending: a loss that was not there."""
    since_ms = int(since.timestamp() * 1000)
    result = Reconciliation()
    committed = _committed(bootstrap, landing_group, topics, timeout_s)
    where: dict[tuple[str, int, int], Key] = {}  # (topic, partition, offset) -> row key
    first_offset: dict[tuple[str, int], int] = {}
    for topic in topics:
        for partition, offset, customer, ts_ms, _ in _read_since(
            bootstrap, topic, since_ms, timeout_s
        ):
            key = (customer, _hour(ts_ms))
            where[(topic, partition, offset)] = key
            first_offset.setdefault((topic, partition), offset)
            result.rows[key].in_kafka += 1
            if topic == overflow_topic:
                result.rows[key].overflow += 1

    # Landed rows, by the offsets they came from, below the committed offsets only.
    landed: dict[tuple[str, int, int], int] = defaultdict(int)
    with clickhouse.session() as client:
        for (topic, partition), first in first_offset.items():
            end = committed.get((topic, partition), 0)
            if end <= first:
                continue
            rows = client.query(
                f"SELECT kafka_offset, count() FROM {clickhouse.database}.events "
                "WHERE kafka_topic = %(t)s AND kafka_partition = %(p)s "
                "AND kafka_offset >= %(o)s AND kafka_offset < %(e)s "
                "GROUP BY kafka_offset",
                parameters={"t": topic, "p": partition, "o": first, "e": end},
            ).result_rows
            for offset, n in rows:
                landed[(topic, partition, offset)] = n
    for position, n in landed.items():
        key = where.get(position)
        if key is not None:
            result.rows[key].landed += 1
            result.rows[key].duplicates += n - 1

    # Dead letters: the landing job's (by source offset) and the collector's (by customer).
    dead_positions: set[tuple[str, int, int]] = set()
    for _, _, customer, ts_ms, message in _read_since(bootstrap, dlq_topic, since_ms, timeout_s):
        letter = parse_dead_letter(message)
        if letter.stage == "collect":
            result.rows[(letter.customer_id or customer, _hour(ts_ms))].rejected_at_intake += 1
        elif letter.source_topic is not None and letter.source_offset is not None:
            position = (letter.source_topic, letter.source_partition or 0, letter.source_offset)
            below = letter.source_offset < committed.get(position[:2], 0)
            counted = position in landed or position in dead_positions
            if below and position in where and not counted:
                dead_positions.add(position)
                result.rows[where[position]].dead_landing += 1

    # Not yet processed as of the snapshot: at or beyond the committed offsets.
    for (topic, partition, offset), key in where.items():
        if offset >= committed.get((topic, partition), 0):
            result.rows[key].pending += 1
    return result


def _committed(
    bootstrap: str, group: str, topics: list[str], timeout_s: float
) -> dict[tuple[str, int], int]:
    """The group's committed offset of every partition of ``topics`` (0 where none is)."""
    consumer = make_consumer(bootstrap, group)
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in consumer.list_topics(topic, timeout=timeout_s).topics[topic].partitions
        ]
        if not partitions:
            return {}
        return {
            (tp.topic, tp.partition): max(tp.offset, 0)
            for tp in committed_offsets(consumer, partitions, timeout_s)
        }
    finally:
        consumer.close()


def reconcile_platform(settings: Settings, since: datetime) -> Reconciliation:
    """The platform's own topics, landing group and ClickHouse (`eventplatform reconcile`)."""
    k = settings.kafka
    return reconcile(
        k.bootstrap,
        platform_clickhouse(settings),
        [k.raw_topic, k.overflow_topic],
        k.dlq_topic,
        settings.land.group_id,
        since,
        overflow_topic=k.overflow_topic,
    )


def format_table(result: Reconciliation) -> str:
    header = (
        f"{'customer':<16} {'hour (UTC)':<14} {'in kafka':>9} {'overflow':>9} "
        f"{'landed':>8} {'dlq land':>9} {'pending':>8} {'rejected':>9} {'dupes':>6} "
        f"{'missing':>8}"
    )
    lines = [header, "-" * len(header)]
    for (customer, hour), r in sorted(result.rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        lines.append(
            f"{customer:<16} {hour:%Y-%m-%d %H}h  {r.in_kafka:>9} {r.overflow:>9} "
            f"{r.landed:>8} {r.dead_landing:>9} {r.pending:>8} "
            f"{r.rejected_at_intake:>9} {r.duplicates:>6} {r.unaccounted:>8}"
        )
    t = result.totals()
    lines.append("-" * len(header))
    lines.append(
        f"{'total':<16} {'':<14} {t.in_kafka:>9} {t.overflow:>9} {t.landed:>8} "
        f"{t.dead_landing:>9} {t.pending:>8} {t.rejected_at_intake:>9} "
        f"{t.duplicates:>6} {t.unaccounted:>8}"
    )
    return "\n".join(lines)


_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``30m``, ``6h``, ``2d`` before now, or an ISO-8601 time with a zone."""
    now = now or datetime.now(UTC)
    match = re.fullmatch(r"(\d+)([mhd])", text.strip())
    if match:
        n, unit = int(match.group(1)), match.group(2)
        return now - timedelta(**{_UNITS[unit]: n})
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--since: expected 30m, 6h, 2d or an ISO-8601 time, got {text!r}"
        ) from None
    if parsed.tzinfo is None:
        raise ValueError(f"--since: {text!r} has no time zone (add Z or +00:00)")
    return parsed
